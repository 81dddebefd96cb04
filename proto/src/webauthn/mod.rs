//! Passkeys (WebAuthn Level 2): reading a registration, and verifying an
//! assertion against a credential's public key.
//!
//! The same code judges three things: a console login (a challenge the
//! serving node drew), an approval or denial (the challenge is SHA-256 of the
//! canonical statement, [`statement_challenge`], so the assertion *is* a
//! signature over the statement), and a registration (read on every node
//! from the node-authored `RegisterPasskey` command). Every check is
//! deterministic and bounded by the sizes below, so every node judges an
//! assertion alike and a hostile one costs little.
//!
//! What is checked (WebAuthn §7.2): the client data's `type`, `challenge`
//! and `origin` (one of the replicated origins; `crossOrigin` refused), the
//! authenticator data's `rpIdHash` (SHA-256 of the replicated RP ID), the
//! user-present flag always and user-verified where required, and the
//! signature over `authenticatorData || SHA-256(clientDataJSON)` with the
//! credential's COSE key (ES256 on P-256, or Ed25519). The signature counter
//! is returned; the caller (the state) compares it with the one it keeps.
//! Attestation statements are not verified: an admin approves each credential.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod soft;

/// Passkeys one operator may hold (approved).
pub const PASSKEYS_PER_OPERATOR_MAX: usize = 8;
/// Registrations waiting for the admins, per operator and in all.
pub const PENDING_PASSKEYS_PER_OPERATOR_MAX: usize = 4;
pub const PENDING_PASSKEYS_MAX: usize = 64;
/// How long (log time) a registration waits for the admins.
pub const PENDING_PASSKEY_MS: u64 = 24 * 60 * 60 * 1000;
/// Origins one cluster accepts.
pub const ORIGINS_MAX: usize = 8;
/// The largest credential id (bytes; WebAuthn allows 1023, authenticators use 16 to 64).
pub const CREDENTIAL_ID_BYTES_MAX: usize = 256;
/// The largest client data JSON, authenticator data, attestation object and COSE key accepted.
pub const CLIENT_DATA_BYTES_MAX: usize = 2048;
pub const AUTHENTICATOR_DATA_BYTES_MAX: usize = 1024;
pub const ATTESTATION_OBJECT_BYTES_MAX: usize = 4096;
pub const COSE_KEY_BYTES_MAX: usize = 256;
/// The longest passkey label.
pub const LABEL_BYTES_MAX: usize = 64;

/// COSE algorithm identifiers (RFC 9053).
pub const COSE_ES256: i64 = -7;
pub const COSE_EDDSA: i64 = -8;

const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;

/// Why a registration or assertion was refused, in words for the person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WebAuthnError(pub String);

fn refuse<T>(text: impl Into<String>) -> Result<T, WebAuthnError> {
    Err(WebAuthnError(text.into()))
}

/// The relying party, as the replicated state holds it (set by an admin
/// command under the admin quorum, never by a node's config), so every node
/// judges an assertion by the same RP ID and origins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebAuthnConfig {
    /// A domain (`localhost` in development), never an IP address.
    pub rp_id: String,
    /// The name browsers show when a passkey is created.
    #[serde(default)]
    pub rp_name: String,
    /// The exact origins (`https://host[:port]`) the console is served from.
    pub origins: Vec<String>,
}

impl WebAuthnConfig {
    /// Checks the settings' shape: the RP ID a domain, each origin HTTPS on it
    /// or a subdomain of it.
    pub fn validate(&self) -> Result<(), WebAuthnError> {
        let rp = &self.rp_id;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if rp.is_empty() || rp.len() > 253 || !rp.split('.').all(label_ok) {
            return refuse(format!(
                "RP ID {rp:?} is not a domain name (lower-case labels of letters, digits and hyphens); use the \
                 console's host name, e.g. localhost or synod.example.com"
            ));
        }
        if rp.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            return refuse(format!("RP ID {rp:?} is an IP address; WebAuthn needs a domain name"));
        }
        if self.rp_name.len() > LABEL_BYTES_MAX || self.rp_name.chars().any(char::is_control) {
            return refuse(format!("the RP name must be at most {LABEL_BYTES_MAX} printable characters"));
        }
        if self.origins.is_empty() || self.origins.len() > ORIGINS_MAX {
            return refuse(format!("name 1 to {ORIGINS_MAX} origins, e.g. https://{rp}:8443"));
        }
        for origin in &self.origins {
            let Some(rest) = origin.strip_prefix("https://") else {
                return refuse(format!("origin {origin:?} is not https://; passkeys need a secure origin"));
            };
            let (host, port) = rest.split_once(':').unwrap_or((rest, ""));
            let port_ok = port.is_empty() || (port.len() <= 5 && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok || host.contains('/') {
                return refuse(format!("origin {origin:?} must be https://host or https://host:port, without a path"));
            }
            if host != rp && !host.ends_with(&format!(".{rp}")) {
                return refuse(format!("origin {origin:?} is not on the RP ID {rp} or a subdomain of it"));
            }
        }
        Ok(())
    }
}

/// A credential's public key, from its COSE encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoseKey {
    /// ECDSA on P-256 with SHA-256 (COSE -7): the affine coordinates.
    Es256 { x: [u8; 32], y: [u8; 32] },
    /// EdDSA with Ed25519 (COSE -8).
    Ed25519([u8; 32]),
}

impl CoseKey {
    /// Reads a COSE_Key (RFC 9052 §7): EC2 on P-256 with ES256, or OKP on Ed25519 with EdDSA.
    pub fn from_cose(bytes: &[u8]) -> Result<Self, WebAuthnError> {
        if bytes.len() > COSE_KEY_BYTES_MAX {
            return refuse(format!("the credential's public key is over {COSE_KEY_BYTES_MAX} bytes"));
        }
        let value: ciborium::Value = ciborium::from_reader(bytes)
            .map_err(|e| WebAuthnError(format!("the credential's public key is not CBOR: {e}")))?;
        Self::from_value(&value)
    }

    fn from_value(value: &ciborium::Value) -> Result<Self, WebAuthnError> {
        let map = value.as_map().ok_or(WebAuthnError("the credential's public key is not a COSE map".into()))?;
        let get = |label: i64| {
            map.iter().find(|(k, _)| k.as_integer().is_some_and(|i| i128::from(i) == i128::from(label))).map(|(_, v)| v)
        };
        let int = |label: i64| get(label).and_then(|v| v.as_integer()).map(i128::from);
        let bytes32 = |label: i64, what: &str| -> Result<[u8; 32], WebAuthnError> {
            get(label)
                .and_then(|v| v.as_bytes())
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or(WebAuthnError(format!("the credential's public key lacks a 32-byte {what}")))
        };
        match (int(1), int(3), int(-1)) {
            (Some(2), Some(-7), Some(1)) => {
                let (x, y) = (bytes32(-2, "x")?, bytes32(-3, "y")?);
                let key = CoseKey::Es256 { x, y };
                key.p256()?;
                Ok(key)
            }
            (Some(1), Some(-8), Some(6)) => Ok(CoseKey::Ed25519(bytes32(-2, "x")?)),
            (kty, alg, crv) => refuse(format!(
                "the credential's key (kty {kty:?}, alg {alg:?}, crv {crv:?}) is neither ES256 on P-256 nor \
                 Ed25519; create the passkey with one of those"
            )),
        }
    }

    /// Its COSE encoding (canonical: labels in order), for storing.
    pub fn to_cose(&self) -> Vec<u8> {
        use ciborium::Value;
        let i = |n: i64| Value::Integer(n.into());
        let map = match self {
            CoseKey::Es256 { x, y } => vec![
                (i(1), i(2)),
                (i(3), i(COSE_ES256)),
                (i(-1), i(1)),
                (i(-2), Value::Bytes(x.to_vec())),
                (i(-3), Value::Bytes(y.to_vec())),
            ],
            CoseKey::Ed25519(x) => {
                vec![(i(1), i(1)), (i(3), i(COSE_EDDSA)), (i(-1), i(6)), (i(-2), Value::Bytes(x.to_vec()))]
            }
        };
        let mut out = Vec::new();
        ciborium::into_writer(&Value::Map(map), &mut out).expect("writing CBOR to memory");
        out
    }

    /// The COSE algorithm: -7 (ES256) or -8 (EdDSA).
    pub fn algorithm(&self) -> i64 {
        match self {
            CoseKey::Es256 { .. } => COSE_ES256,
            CoseKey::Ed25519(_) => COSE_EDDSA,
        }
    }

    fn p256(&self) -> Result<p256::ecdsa::VerifyingKey, WebAuthnError> {
        let CoseKey::Es256 { x, y } = self else { return refuse("not a P-256 key") };
        let point = p256::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
        p256::ecdsa::VerifyingKey::from_encoded_point(&point)
            .map_err(|_| WebAuthnError("the credential's P-256 key is not a point on the curve".into()))
    }

    /// Checks `signature` over `data` (ES256: DER-encoded ECDSA over SHA-256;
    /// EdDSA: 64 bytes, strict).
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), WebAuthnError> {
        use p256::ecdsa::signature::Verifier;
        let ok = match self {
            CoseKey::Es256 { .. } => {
                let sig = p256::ecdsa::Signature::from_der(signature)
                    .map_err(|_| WebAuthnError("the ES256 signature is not a DER ECDSA signature".into()))?;
                self.p256()?.verify(data, &sig).is_ok()
            }
            CoseKey::Ed25519(key) => {
                let sig: [u8; 64] =
                    signature.try_into().map_err(|_| WebAuthnError("the Ed25519 signature is not 64 bytes".into()))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(key)
                    .map_err(|_| WebAuthnError("the credential's Ed25519 key is invalid".into()))?;
                key.verify_strict(data, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            refuse("the passkey's signature does not verify with the registered credential")
        }
    }
}

/// An assertion as `navigator.credentials.get` returns it, every field
/// base64url (padding optional).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub credential_id: String,
    pub authenticator_data: String,
    pub client_data_json: String,
    pub signature: String,
}

impl Assertion {
    /// Sizes and encodings, before any parsing.
    pub fn validate(&self) -> Result<(), WebAuthnError> {
        credential_id_bytes(&self.credential_id)?;
        bounded("authenticator data", &self.authenticator_data, AUTHENTICATOR_DATA_BYTES_MAX)?;
        bounded("client data", &self.client_data_json, CLIENT_DATA_BYTES_MAX)?;
        bounded("signature", &self.signature, 128)?;
        Ok(())
    }
}

/// What a verified assertion said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssertionFacts {
    /// The authenticator's signature counter (0: it keeps none).
    pub counter: u32,
    pub user_verified: bool,
}

/// The challenge an approval or denial assertion signs: SHA-256 of the
/// statement's canonical bytes (`authz::approval_bytes` or `denial_bytes`).
pub fn statement_challenge(statement: &[u8]) -> [u8; 32] {
    Sha256::digest(statement).into()
}

#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(default, rename = "crossOrigin")]
    cross_origin: bool,
}

fn client_data(
    config: &WebAuthnConfig,
    json: &[u8],
    kind: &str,
    challenge: Option<&[u8]>,
) -> Result<(), WebAuthnError> {
    let data: ClientData = serde_json::from_slice(json)
        .map_err(|e| WebAuthnError(format!("the client data is not WebAuthn client data JSON: {e}")))?;
    if data.kind != kind {
        return refuse(format!("the client data's type is {:?}, not {kind:?}", data.kind));
    }
    if let Some(expected) = challenge {
        let got = from_b64url(&data.challenge)
            .map_err(|_| WebAuthnError("the client data's challenge is not base64url".into()))?;
        if got != expected {
            return refuse(
                "the assertion signs another challenge (made for another request, statement or login); ask the \
                 approver to approve this request again",
            );
        }
    }
    if !config.origins.contains(&data.origin) {
        return refuse(format!(
            "the assertion was made on origin {:?}, which is not one of the cluster's console origins {:?}",
            data.origin, config.origins
        ));
    }
    if data.cross_origin {
        return refuse("the assertion was made in a cross-origin frame; approve from the console itself");
    }
    Ok(())
}

struct AuthenticatorData<'a> {
    flags: u8,
    counter: u32,
    /// The attested credential data and extensions, when present.
    rest: &'a [u8],
}

fn authenticator_data<'a>(
    config: &WebAuthnConfig,
    bytes: &'a [u8],
    uv_required: bool,
) -> Result<AuthenticatorData<'a>, WebAuthnError> {
    if bytes.len() < 37 {
        return refuse("the authenticator data is shorter than its 37-byte header");
    }
    let rp_hash: [u8; 32] = Sha256::digest(config.rp_id.as_bytes()).into();
    if bytes[..32] != rp_hash {
        return refuse(format!("the passkey was used for another RP ID than this cluster's ({})", config.rp_id));
    }
    let flags = bytes[32];
    if flags & FLAG_UP == 0 {
        return refuse("the authenticator did not confirm user presence (UP flag unset)");
    }
    if uv_required && flags & FLAG_UV == 0 {
        return refuse(
            "the authenticator did not verify the user (UV flag unset); approvals need a PIN or biometric check",
        );
    }
    let counter = u32::from_be_bytes(bytes[33..37].try_into().expect("4 bytes"));
    Ok(AuthenticatorData { flags, counter, rest: &bytes[37..] })
}

/// Verifies an assertion made with `key` for `challenge` against the
/// cluster's relying party: client data, RP ID hash, UP (and UV when
/// `uv_required`), and the signature. Returns the counter for the caller to
/// compare with the one it keeps.
pub fn verify_assertion(
    config: &WebAuthnConfig,
    key: &CoseKey,
    assertion: &Assertion,
    challenge: &[u8],
    uv_required: bool,
) -> Result<AssertionFacts, WebAuthnError> {
    assertion.validate()?;
    let auth = from_b64url(&assertion.authenticator_data)?;
    let json = from_b64url(&assertion.client_data_json)?;
    let signature = from_b64url(&assertion.signature)?;
    client_data(config, &json, "webauthn.get", Some(challenge))?;
    let parsed = authenticator_data(config, &auth, uv_required)?;
    let mut signed = auth.clone();
    signed.extend_from_slice(&Sha256::digest(&json));
    key.verify(&signed, &signature)?;
    Ok(AssertionFacts { counter: parsed.counter, user_verified: parsed.flags & FLAG_UV != 0 })
}

/// A registration as `navigator.credentials.create` (attestation "none")
/// returns it, every field base64url.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub credential_id: String,
    pub client_data_json: String,
    pub attestation_object: String,
}

impl Registration {
    pub fn validate(&self) -> Result<(), WebAuthnError> {
        credential_id_bytes(&self.credential_id)?;
        bounded("client data", &self.client_data_json, CLIENT_DATA_BYTES_MAX)?;
        bounded("attestation object", &self.attestation_object, ATTESTATION_OBJECT_BYTES_MAX)?;
        Ok(())
    }
}

/// The credential a registration creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCredential {
    /// base64url, as browsers name it.
    pub credential_id: String,
    /// The COSE key, re-encoded canonically, base64url.
    pub public_key: String,
    pub algorithm: i64,
    pub counter: u32,
    /// `SHA256:` and the unpadded base64 of SHA-256 over the COSE key, as
    /// `ssh-keygen -l` names keys: what the person tells the admins.
    pub fingerprint: String,
}

/// Reads a registration: client data of type `webauthn.create` on one of the
/// cluster's origins (and for `challenge`, when the caller drew one), the RP
/// ID hash, UP and UV, and the attested credential whose id must be the one
/// named. The attestation statement itself is not checked.
pub fn read_registration(
    config: &WebAuthnConfig,
    registration: &Registration,
    challenge: Option<&[u8]>,
) -> Result<NewCredential, WebAuthnError> {
    registration.validate()?;
    let json = from_b64url(&registration.client_data_json)?;
    client_data(config, &json, "webauthn.create", challenge)?;
    let object = from_b64url(&registration.attestation_object)?;
    let value: ciborium::Value = ciborium::from_reader(object.as_slice())
        .map_err(|e| WebAuthnError(format!("the attestation object is not CBOR: {e}")))?;
    let auth = value
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("authData")))
        .and_then(|(_, v)| v.as_bytes())
        .ok_or(WebAuthnError("the attestation object has no authData".into()))?;
    let parsed = authenticator_data(config, auth, true)?;
    if parsed.flags & FLAG_AT == 0 || parsed.rest.len() < 18 {
        return refuse("the authenticator data carries no attested credential");
    }
    let id_len = usize::from(u16::from_be_bytes([parsed.rest[16], parsed.rest[17]]));
    let after_id = 18 + id_len;
    if id_len == 0 || id_len > CREDENTIAL_ID_BYTES_MAX || parsed.rest.len() < after_id {
        return refuse("the attested credential id is empty, too long or cut short");
    }
    let id = &parsed.rest[18..after_id];
    if id != credential_id_bytes(&registration.credential_id)?.as_slice() {
        return refuse("the registration names another credential id than its authenticator data");
    }
    let mut key_bytes = &parsed.rest[after_id..];
    let key_value: ciborium::Value = ciborium::from_reader(&mut key_bytes)
        .map_err(|e| WebAuthnError(format!("the credential's public key is not CBOR: {e}")))?;
    let key = CoseKey::from_value(&key_value)?;
    let cose = key.to_cose();
    use base64::Engine;
    let fingerprint =
        format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&cose)));
    Ok(NewCredential {
        credential_id: b64url(id),
        public_key: b64url(&cose),
        algorithm: key.algorithm(),
        counter: parsed.counter,
        fingerprint,
    })
}

/// Unpadded base64url, as WebAuthn names bytes.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// base64url, padded or not.
pub fn from_b64url(text: &str) -> Result<Vec<u8>, WebAuthnError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| WebAuthnError("a passkey field is not base64url".into()))
}

fn bounded(what: &str, text: &str, max_bytes: usize) -> Result<(), WebAuthnError> {
    if text.len() > max_bytes.div_ceil(3) * 4 + 4 {
        return refuse(format!("the {what} is over {max_bytes} bytes"));
    }
    Ok(())
}

fn credential_id_bytes(id: &str) -> Result<Vec<u8>, WebAuthnError> {
    bounded("credential id", id, CREDENTIAL_ID_BYTES_MAX)?;
    let bytes = from_b64url(id)?;
    if bytes.is_empty() || bytes.len() > CREDENTIAL_ID_BYTES_MAX {
        return refuse(format!("a credential id is 1 to {CREDENTIAL_ID_BYTES_MAX} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebAuthnConfig {
        WebAuthnConfig {
            rp_id: "localhost".into(),
            rp_name: "Synod".into(),
            origins: vec!["https://localhost:8443".into()],
        }
    }

    #[test]
    fn settings_need_a_domain_and_https_origins_on_it() {
        assert!(config().validate().is_ok());
        for (rp, origin) in [
            ("127.0.0.1", "https://127.0.0.1"),
            ("Localhost", "https://localhost"),
            ("localhost", "http://localhost"),
            ("localhost", "https://example.com"),
            ("localhost", "https://localhost/console"),
            ("example.com", "https://evilexample.com"),
        ] {
            let c = WebAuthnConfig { rp_id: rp.into(), rp_name: String::new(), origins: vec![origin.into()] };
            assert!(c.validate().is_err(), "{rp} {origin}");
        }
        let sub = WebAuthnConfig {
            rp_id: "example.com".into(),
            rp_name: String::new(),
            origins: vec!["https://synod.example.com:8443".into()],
        };
        assert!(sub.validate().is_ok());
    }

    #[test]
    fn cose_keys_round_trip_and_others_are_refused() {
        let ed = CoseKey::Ed25519([7; 32]);
        assert_eq!(CoseKey::from_cose(&ed.to_cose()).unwrap(), ed);
        let secret = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
        let point = secret.verifying_key().to_encoded_point(false);
        let es = CoseKey::Es256 { x: (*point.x().unwrap()).into(), y: (*point.y().unwrap()).into() };
        assert_eq!(CoseKey::from_cose(&es.to_cose()).unwrap(), es);
        // Not on the curve.
        let off = CoseKey::Es256 { x: [1; 32], y: [2; 32] };
        assert!(CoseKey::from_cose(&off.to_cose()).is_err());
        assert!(CoseKey::from_cose(b"\xa0").is_err());
        assert!(CoseKey::from_cose(&[0xff; 300]).is_err());
    }
}
