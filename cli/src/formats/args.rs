//! The options of `synod sign` and `synod verify` that only some formats read.
//! Each format's options sit together below; a format that does not read an
//! option refuses it rather than ignore it.

use std::path::PathBuf;

use clap::Args;
use synod_proto::format::SignFormat;

/// `--format` and the options of each format.
#[derive(Args, Debug, Clone, Default)]
pub struct FormatArgs {
    /// The container the signature goes into: raw (64-byte RFC 8032 signature of the file),
    /// sshsig, jws, jwt, minisign, openpgp, cms or http-signature. Every node parses the signed
    /// bytes as this format, and a key's policy may restrict formats.
    #[arg(long, default_value = "raw", value_parser = parse_format)]
    pub format: SignFormat,

    // SSHSIG.
    /// sshsig: the namespace the signature is for (git, file, or your own); verifiers check it.
    #[arg(long)]
    pub namespace: Option<String>,

    // minisign.
    /// minisign: the trusted comment, signed with the signature (default: timestamp and file name).
    #[arg(long)]
    pub trusted_comment: Option<String>,

    // JWS / JWT.
    /// jws, jwt: the JOSE algorithm name, EdDSA (the default, what most libraries know) or
    /// Ed25519 (RFC 9864).
    #[arg(long)]
    pub alg: Option<String>,

    // OpenPGP.
    /// openpgp: the key creation time `synod key openpgp --created` exported the key with
    /// (RFC 3339 or unix seconds), when not the default: the signature names the key by its
    /// fingerprint, which covers that time.
    #[arg(long)]
    pub key_created: Option<String>,

    // CMS.
    /// cms: the certificate of the key (PEM or DER), from `synod key certificate` or your CA.
    #[arg(long)]
    pub cert: Option<PathBuf>,

    // HTTP message signatures.
    /// http-signature: the request method, e.g. POST.
    #[arg(long)]
    pub method: Option<String>,
    /// http-signature: the request's target URI, e.g. https://hooks.example.com/deliver.
    #[arg(long)]
    pub target_uri: Option<String>,
    /// http-signature: a header the signature covers, NAME:VALUE (repeat).
    #[arg(long = "header")]
    pub headers: Vec<String>,
}

impl FormatArgs {
    /// Refuses the format options this format does not read (`reads`, e.g. `["--namespace"]`)
    /// rather than ignoring them: an option given to the wrong format is a mistake the user
    /// should hear about, not a silent no-op.
    pub fn refuse_others(&self, reads: &[&str]) -> anyhow::Result<()> {
        let given = [
            ("--namespace", self.namespace.is_some()),
            ("--trusted-comment", self.trusted_comment.is_some()),
            ("--alg", self.alg.is_some()),
            ("--key-created", self.key_created.is_some()),
            ("--cert", self.cert.is_some()),
            ("--method", self.method.is_some()),
            ("--target-uri", self.target_uri.is_some()),
            ("--header", !self.headers.is_empty()),
        ];
        match given.iter().find(|(name, given)| *given && !reads.contains(name)) {
            Some((name, _)) if reads.is_empty() => {
                anyhow::bail!(
                    "{name} does not apply to --format {}, which reads no format options; drop {name}",
                    self.format
                )
            }
            Some((name, _)) => anyhow::bail!(
                "{name} does not apply to --format {} (it reads {}); drop {name}",
                self.format,
                reads.join(", ")
            ),
            None => Ok(()),
        }
    }
}

fn parse_format(text: &str) -> Result<SignFormat, String> {
    text.parse()
}
