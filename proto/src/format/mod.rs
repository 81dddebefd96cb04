//! Signing formats: the standard containers a cluster signature goes into.
//!
//! FROST makes plain RFC 8032 Ed25519 signatures (never Ed25519ph), over at most
//! [`crate::command::MESSAGE_BYTES_MAX`] bytes. Every format that carries such a
//! signature reduces to Ed25519 over bytes the client builds: the SSHSIG signed-data
//! blob, a JWS signing input, a CMS `SignedAttributes` set, an RFC 9421 signature
//! base. A sign request declares its format and carries exactly those bytes; every
//! node parses them as the declared format at apply ([`inspect`], from
//! [`crate::command::Command::validate`]) and refuses bytes that do not parse, so a
//! key's policy can restrict formats and SSHSIG namespaces and mean it, and the
//! artifact hash approvers see and the audit log records is the one inside the
//! signed bytes, never a separately declared value.
//!
//! Two formats sign an opaque digest that no node can read into: OpenPGP (the
//! hash of the file and the signature's trailer) and minisign's pre-hashed
//! signature (BLAKE2b-512 of the file). Their [`Inspection::opaque`] is true and
//! every place that shows a request says so.
//!
//! Everything here is deterministic and bounded (it runs inside the replicated
//! state machine), and every error says what was wrong.

use serde::{Deserialize, Serialize};

use crate::command::CommandError;

pub mod cms;
pub mod http;
pub mod jws;
pub mod minisign;
pub mod openpgp;
pub mod sshsig;
pub mod x509;

/// The formats a sign request may declare.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SignFormat {
    /// Any bytes, signed as they are (the only format before rules 9).
    #[default]
    Raw,
    /// OpenSSH's SSHSIG signed-data blob (`PROTOCOL.sshsig`).
    Sshsig,
    /// A JWS signing input, `BASE64URL(header) "." BASE64URL(payload)` (RFC 7515).
    Jws,
    /// A JWS signing input whose payload is a JSON claims set (RFC 7519).
    Jwt,
    /// minisign's pre-hashed signature: BLAKE2b-512 of the file (opaque). The
    /// cluster then signs the global signature over it and the trusted comment.
    Minisign,
    /// An OpenPGP v4 signature's digest (opaque).
    Openpgp,
    /// A DER `TBSCertificate` or `CertificationRequestInfo` (RFC 5280, RFC 2986).
    X509,
    /// A DER CMS `SignedAttributes` set (RFC 5652, Ed25519 per RFC 8419).
    Cms,
    /// An RFC 9421 HTTP message signature base.
    HttpSignature,
}

impl SignFormat {
    /// Every format, in the order help texts list them.
    pub const ALL: [SignFormat; 9] = [
        SignFormat::Raw,
        SignFormat::Sshsig,
        SignFormat::Jws,
        SignFormat::Jwt,
        SignFormat::Minisign,
        SignFormat::Openpgp,
        SignFormat::X509,
        SignFormat::Cms,
        SignFormat::HttpSignature,
    ];

    /// The name used on the command line, in policies and in the approval statement.
    pub fn name(self) -> &'static str {
        match self {
            SignFormat::Raw => "raw",
            SignFormat::Sshsig => "sshsig",
            SignFormat::Jws => "jws",
            SignFormat::Jwt => "jwt",
            SignFormat::Minisign => "minisign",
            SignFormat::Openpgp => "openpgp",
            SignFormat::X509 => "x509",
            SignFormat::Cms => "cms",
            SignFormat::HttpSignature => "http-signature",
        }
    }
}

impl std::fmt::Display for SignFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SignFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SignFormat::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = SignFormat::ALL.iter().map(|f| f.name()).collect();
            format!("unknown signing format {s:?}; one of: {}", names.join(", "))
        })
    }
}

/// The longest [`Inspection::summary`], in bytes.
pub const SUMMARY_BYTES_MAX: usize = 512;
/// The longest minisign trusted comment, in bytes.
pub const TRUSTED_COMMENT_BYTES_MAX: usize = 1024;

/// What a node read from a request's to-be-signed bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Inspection {
    /// The hash of the artifact as the signed bytes name it, `ALGORITHM:HEX`
    /// (`sha512:…`, `sha256:…`, `blake2b-512:…`); absent when the format names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_hash: Option<String>,
    /// The SSHSIG namespace (`git`, `file`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// True when the signed bytes are a digest nothing can be read from
    /// (OpenPGP, minisign's pre-hash): approvers must trust the requester for
    /// what it is a digest of.
    #[serde(default)]
    pub opaque: bool,
    /// A line for people: the JWS header's `alg` and the claims, a CSR's
    /// subject, the HTTP method and target. At most [`SUMMARY_BYTES_MAX`]
    /// printable bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

/// A request's format as the state keeps it and the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FormatInfo {
    pub format: SignFormat,
    #[serde(flatten)]
    pub inspection: Inspection,
    /// minisign: the trusted comment the global signature covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_comment: Option<String>,
    /// minisign's global signature request: the request whose signature it
    /// signs (with that request's trusted comment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_of: Option<String>,
}

/// Parses `message` as `format`'s to-be-signed bytes. Refuses bytes that do not
/// parse, saying what was wrong; [`SignFormat::Raw`] takes any bytes.
pub fn inspect(format: SignFormat, message: &[u8]) -> Result<Inspection, CommandError> {
    let read = match format {
        SignFormat::Raw => Ok(Inspection::default()),
        SignFormat::Sshsig => sshsig::inspect(message),
        SignFormat::Jws => jws::inspect(message, false),
        SignFormat::Jwt => jws::inspect(message, true),
        SignFormat::Minisign => minisign::inspect(message),
        SignFormat::Openpgp => openpgp::inspect(message),
        SignFormat::X509 => x509::inspect(message),
        SignFormat::Cms => cms::inspect(message),
        SignFormat::HttpSignature => http::inspect(message),
    };
    let mut inspection = read.map_err(|why| {
        CommandError::Malformed(format!(
            "the message does not parse as {format}: {why}; build it with `synod sign --format {format}`"
        ))
    })?;
    inspection.summary = printable(&inspection.summary, SUMMARY_BYTES_MAX);
    Ok(inspection)
}

/// Checks a minisign trusted comment: printable, one line, bounded. Tabs are
/// allowed: minisign's own comments separate their fields with them.
pub fn validate_trusted_comment(comment: &str) -> Result<(), CommandError> {
    if comment.len() > TRUSTED_COMMENT_BYTES_MAX || comment.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CommandError::Malformed(format!(
            "the trusted comment must be one line of at most {TRUSTED_COMMENT_BYTES_MAX} printable bytes (tabs allowed)"
        )));
    }
    Ok(())
}

/// `text` with control characters replaced and cut to at most `max` bytes (on a
/// character boundary), so a summary read from hostile bytes is safe to show.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_control() { '\u{FFFD}' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// `ALGORITHM:HEX`, the form of [`Inspection::artifact_hash`].
pub fn hash_label(algorithm: &str, digest: &[u8]) -> String {
    format!("{algorithm}:{}", hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip_and_match_serde() {
        for format in SignFormat::ALL {
            assert_eq!(format.name().parse::<SignFormat>().unwrap(), format);
            assert_eq!(serde_json::to_value(format).unwrap(), serde_json::Value::String(format.name().into()));
        }
        let error = "ed25519ph".parse::<SignFormat>().unwrap_err();
        assert!(error.contains("sshsig") && error.contains("http-signature"), "{error}");
    }

    #[test]
    fn format_refusals_name_the_format_and_the_fix() {
        for format in SignFormat::ALL.into_iter().filter(|f| *f != SignFormat::Raw) {
            let error = inspect(format, b"\x00not a to-be-signed message of any format").unwrap_err().to_string();
            assert!(error.contains(&format!("as {format}")), "{error}");
            assert!(error.contains(&format!("--format {format}")), "{error}");
        }
    }

    #[test]
    fn format_summaries_are_printable_and_bounded() {
        assert_eq!(printable("a\nb", 10), "a\u{FFFD}b");
        assert_eq!(printable("ééé", 5).len(), 4);
    }
}
