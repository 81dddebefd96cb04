//! A software passkey: the authenticator and browser halves of WebAuthn in a
//! few hundred lines, for the simulator and the tests. It is never used by a
//! node; nodes only verify what passkeys make.
//!
//! A browser's own authenticators make only well-formed registrations and
//! assertions for the page's origin, so the cases every node must refuse (an
//! assertion for another origin or RP ID, without user verification, with a
//! counter that went backwards, of another type) come from here. What it
//! makes is what a browser hands the page: a registration with attestation
//! "none" (`navigator.credentials.create`) and an assertion
//! (`navigator.credentials.get`), every field base64url without padding.
//! Its keys are ES256 (ECDSA on P-256 with SHA-256, DER signatures) and
//! Ed25519, the two algorithms Synod accepts.

use ciborium::Value;
use p256::ecdsa::signature::Signer as _;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use super::{b64url, Assertion, CoseKey, Registration, COSE_EDDSA, COSE_ES256, FLAG_AT, FLAG_UP, FLAG_UV};

/// Bytes of a random credential id; real authenticators use 16 to 64 or more.
const CREDENTIAL_ID_BYTES: usize = 32;

/// The COSE algorithm of a software passkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftAlgorithm {
    /// ECDSA on P-256 with SHA-256 (COSE -7), the algorithm most passkeys use.
    Es256,
    /// EdDSA on Ed25519 (COSE -8).
    Ed25519,
}

impl SoftAlgorithm {
    /// The COSE algorithm identifier (RFC 9053).
    pub fn cose_id(self) -> i64 {
        match self {
            SoftAlgorithm::Es256 => COSE_ES256,
            SoftAlgorithm::Ed25519 => COSE_EDDSA,
        }
    }
}

/// The private key of a software passkey (both types zeroize on drop).
enum SoftKey {
    Es256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A software passkey holding one credential, with knobs for the assertions
/// a real authenticator would not make.
pub struct SoftAuthenticator {
    /// The credential's private key.
    key: SoftKey,
    /// The credential id the authenticator chose at creation (random).
    credential_id: Vec<u8>,
    /// The signature counter the next assertion reports.
    next_counter: u32,
    /// Whether the UV flag is set: the authenticator checked a PIN or
    /// biometric. Off makes the assertion of an authenticator that did not.
    pub user_verified: bool,
    /// Whether the UP flag is set. Off makes an assertion no one touched the
    /// authenticator for (a browser never returns one).
    pub user_present: bool,
    /// The clientData `type` to write instead of `webauthn.create` or
    /// `webauthn.get` (e.g. a login assertion passed off as a registration).
    pub client_data_type: Option<String>,
}

impl std::fmt::Debug for SoftAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftAuthenticator")
            .field("algorithm", &self.algorithm())
            .field("credential_id", &b64url(&self.credential_id))
            .field("key", &"<redacted>")
            .field("next_counter", &self.next_counter)
            .field("user_verified", &self.user_verified)
            .field("user_present", &self.user_present)
            .field("client_data_type", &self.client_data_type)
            .finish()
    }
}

impl SoftAuthenticator {
    /// A new credential of `algorithm` with a fresh key and credential id
    /// drawn from `rng`; user present and verified, counter 0 at registration.
    pub fn new(algorithm: SoftAlgorithm, rng: &mut impl CryptoRngCore) -> Self {
        let key = match algorithm {
            SoftAlgorithm::Es256 => SoftKey::Es256(p256::ecdsa::SigningKey::random(rng)),
            SoftAlgorithm::Ed25519 => SoftKey::Ed25519(ed25519_dalek::SigningKey::generate(rng)),
        };
        let mut credential_id = vec![0; CREDENTIAL_ID_BYTES];
        rng.fill_bytes(&mut credential_id);
        SoftAuthenticator {
            key,
            credential_id,
            next_counter: 1,
            user_verified: true,
            user_present: true,
            client_data_type: None,
        }
    }

    /// The credential's algorithm.
    pub fn algorithm(&self) -> SoftAlgorithm {
        match self.key {
            SoftKey::Es256(_) => SoftAlgorithm::Es256,
            SoftKey::Ed25519(_) => SoftAlgorithm::Ed25519,
        }
    }

    /// The credential id, base64url as the browser reports it.
    pub fn credential_id(&self) -> String {
        b64url(&self.credential_id)
    }

    /// Makes the next assertion report counter `n` (and later ones `n + 1`, ...),
    /// e.g. one lower than an assertion already made, as a cloned
    /// authenticator would.
    pub fn set_counter(&mut self, n: u32) {
        self.next_counter = n;
    }

    /// Gives the same key another credential id, as someone registering a
    /// public key they copied from a listing would claim.
    pub fn set_credential_id(&mut self, id: &[u8]) {
        self.credential_id = id.to_vec();
    }

    /// The counter the next assertion reports.
    pub fn next_counter(&self) -> u32 {
        self.next_counter
    }

    /// The credential's public key.
    pub fn public_key(&self) -> CoseKey {
        match &self.key {
            SoftKey::Es256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                let coordinate = |c: Option<&p256::FieldBytes>| (*c.expect("an uncompressed point")).into();
                CoseKey::Es256 { x: coordinate(point.x()), y: coordinate(point.y()) }
            }
            SoftKey::Ed25519(key) => CoseKey::Ed25519(key.verifying_key().to_bytes()),
        }
    }

    /// The credential's public key as a COSE_Key (CBOR map, CTAP2 key order),
    /// as the authenticator puts it in a registration.
    pub fn cose_key(&self) -> Vec<u8> {
        self.public_key().to_cose()
    }

    /// `navigator.credentials.create` with attestation "none" for `rp_id` on
    /// a page of `origin`, answering `challenge`. The authenticator data
    /// reports counter 0; the knobs apply as to assertions.
    pub fn register(&self, rp_id: &str, origin: &str, challenge: &[u8]) -> Registration {
        let client_data_json = self.client_data("webauthn.create", origin, challenge);
        let mut auth_data = self.auth_data_head(rp_id, FLAG_AT, 0);
        auth_data.extend_from_slice(&[0; 16]); // AAGUID: none, as attestation "none" reports.
        let id_length = u16::try_from(self.credential_id.len()).expect("a credential id under 64 KiB");
        auth_data.extend_from_slice(&id_length.to_be_bytes());
        auth_data.extend_from_slice(&self.credential_id);
        auth_data.extend_from_slice(&self.cose_key());
        let text = |s: &str| Value::Text(s.to_string());
        let attestation = Value::Map(vec![
            (text("fmt"), text("none")),
            (text("attStmt"), Value::Map(Vec::new())),
            (text("authData"), Value::Bytes(auth_data)),
        ]);
        Registration {
            credential_id: self.credential_id(),
            client_data_json: b64url(client_data_json.as_bytes()),
            attestation_object: b64url(&cbor(&attestation)),
        }
    }

    /// `navigator.credentials.get` for `rp_id` on a page of `origin`, signing
    /// `challenge`; the counter then moves on by one.
    pub fn assert(&mut self, rp_id: &str, origin: &str, challenge: &[u8]) -> Assertion {
        let counter = self.next_counter;
        self.next_counter = self.next_counter.saturating_add(1);
        let client_data_json = self.client_data("webauthn.get", origin, challenge);
        let auth_data = self.auth_data_head(rp_id, 0, counter);
        // The signature covers authenticatorData || SHA-256(clientDataJSON) (WebAuthn §6.3.3).
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(client_data_json.as_bytes()));
        let signature = match &self.key {
            SoftKey::Es256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(&signed);
                signature.to_der().as_bytes().to_vec()
            }
            SoftKey::Ed25519(key) => ed25519_dalek::Signer::sign(key, &signed).to_bytes().to_vec(),
        };
        Assertion {
            credential_id: self.credential_id(),
            authenticator_data: b64url(&auth_data),
            client_data_json: b64url(client_data_json.as_bytes()),
            signature: b64url(&signature),
        }
    }

    /// rpIdHash || flags || counter: the part of the authenticator data every
    /// ceremony has. `extra_flags` adds to UP and UV as the knobs say.
    fn auth_data_head(&self, rp_id: &str, extra_flags: u8, counter: u32) -> Vec<u8> {
        let mut flags = extra_flags;
        if self.user_present {
            flags |= FLAG_UP;
        }
        if self.user_verified {
            flags |= FLAG_UV;
        }
        let mut out = Sha256::digest(rp_id.as_bytes()).to_vec();
        out.push(flags);
        out.extend_from_slice(&counter.to_be_bytes());
        out
    }

    /// The clientDataJSON a browser writes, in a browser's key order.
    fn client_data(&self, default_type: &str, origin: &str, challenge: &[u8]) -> String {
        let kind = self.client_data_type.as_deref().unwrap_or(default_type);
        let quoted = |s: &str| serde_json::to_string(s).expect("a string serialises");
        format!(
            r#"{{"type":{},"challenge":"{}","origin":{},"crossOrigin":false}}"#,
            quoted(kind),
            b64url(challenge),
            quoted(origin)
        )
    }
}

/// `value` as CBOR bytes.
fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR into a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    //! The verifier's tests as much as this authenticator's: what it makes is
    //! accepted, and each tampered part is refused by the check that owns it.

    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::super::{
        from_b64url, read_registration, statement_challenge, verify_assertion, CoseKey, WebAuthnConfig,
    };
    use super::*;

    const RP_ID: &str = "localhost";
    const ORIGIN: &str = "https://localhost:8443";

    fn config() -> WebAuthnConfig {
        WebAuthnConfig { rp_id: RP_ID.into(), rp_name: "Synod".into(), origins: vec![ORIGIN.into()] }
    }

    /// A passkey of `algorithm` and its public key, as read from its registration.
    fn registered(algorithm: SoftAlgorithm, seed: u64) -> (SoftAuthenticator, CoseKey) {
        let passkey = SoftAuthenticator::new(algorithm, &mut ChaCha20Rng::seed_from_u64(seed));
        let credential = read_registration(&config(), &passkey.register(RP_ID, ORIGIN, b"login"), Some(b"login"))
            .expect("a fresh registration is accepted");
        let key = CoseKey::from_cose(&from_b64url(&credential.public_key).unwrap()).unwrap();
        (passkey, key)
    }

    fn refusal(result: Result<impl std::fmt::Debug, super::super::WebAuthnError>) -> String {
        result.expect_err("the verifier must refuse this").0
    }

    #[test]
    fn soft_registration_of_either_algorithm_is_read_back() {
        // A registration gives back the credential id, its algorithm, counter 0, the COSE key the
        // authenticator holds, and an ssh-style fingerprint of it.
        for (algorithm, cose) in [(SoftAlgorithm::Es256, -7), (SoftAlgorithm::Ed25519, -8)] {
            let passkey = SoftAuthenticator::new(algorithm, &mut ChaCha20Rng::seed_from_u64(1));
            let credential = read_registration(&config(), &passkey.register(RP_ID, ORIGIN, b"c"), None).unwrap();
            assert_eq!(credential.credential_id, passkey.credential_id());
            assert_eq!(credential.algorithm, cose);
            assert_eq!(algorithm.cose_id(), cose);
            assert_eq!(credential.counter, 0);
            assert_eq!(from_b64url(&credential.public_key).unwrap(), passkey.cose_key());
            assert!(credential.fingerprint.starts_with("SHA256:"), "{}", credential.fingerprint);
            assert!(!format!("{passkey:?}").contains("SigningKey"), "Debug must not show the key");
        }
    }

    #[test]
    fn soft_registration_tampered_is_refused() {
        // A registration for another challenge, origin or RP ID, of the wrong type, without user
        // verification, or naming another credential id is refused.
        let passkey = SoftAuthenticator::new(SoftAlgorithm::Es256, &mut ChaCha20Rng::seed_from_u64(2));
        let read = |r: &Registration| read_registration(&config(), r, Some(b"challenge"));
        assert!(read(&passkey.register(RP_ID, ORIGIN, b"challenge")).is_ok());
        assert!(refusal(read(&passkey.register(RP_ID, ORIGIN, b"other"))).contains("another challenge"));
        assert!(refusal(read(&passkey.register(RP_ID, "https://evil.example", b"challenge"))).contains("origin"));
        assert!(refusal(read(&passkey.register("example.com", ORIGIN, b"challenge"))).contains("RP ID"));
        let mut other_id = passkey.register(RP_ID, ORIGIN, b"challenge");
        other_id.credential_id = b64url(b"someone else's credential");
        assert!(refusal(read(&other_id)).contains("another credential id"));
        let mut odd = SoftAuthenticator::new(SoftAlgorithm::Ed25519, &mut ChaCha20Rng::seed_from_u64(3));
        odd.client_data_type = Some("webauthn.get".into());
        assert!(refusal(read(&odd.register(RP_ID, ORIGIN, b"challenge"))).contains("type"));
        odd.client_data_type = None;
        odd.user_verified = false;
        assert!(refusal(read(&odd.register(RP_ID, ORIGIN, b"challenge"))).contains("UV"));
    }

    #[test]
    fn soft_assertion_of_either_algorithm_verifies_and_counts_up() {
        // An approval assertion over a statement's challenge verifies with user verification
        // required; each assertion reports the next counter, and `set_counter` moves it.
        for algorithm in [SoftAlgorithm::Es256, SoftAlgorithm::Ed25519] {
            let (mut passkey, key) = registered(algorithm, 4);
            let challenge = statement_challenge(b"synod/approval/v2\0...");
            let facts = verify_assertion(&config(), &key, &passkey.assert(RP_ID, ORIGIN, &challenge), &challenge, true)
                .expect("a genuine approval verifies");
            assert_eq!((facts.counter, facts.user_verified), (1, true));
            let next = verify_assertion(&config(), &key, &passkey.assert(RP_ID, ORIGIN, &challenge), &challenge, true);
            assert_eq!(next.unwrap().counter, 2);
            passkey.set_counter(10);
            let set = verify_assertion(&config(), &key, &passkey.assert(RP_ID, ORIGIN, &challenge), &challenge, true);
            assert_eq!(set.unwrap().counter, 10);
        }
    }

    #[test]
    fn soft_assertion_tampered_is_refused_by_the_check_that_owns_it() {
        // Each check of an assertion, one at a time: type, challenge, origin, RP ID hash, UP, UV,
        // the signature itself, and the key of another credential.
        for algorithm in [SoftAlgorithm::Es256, SoftAlgorithm::Ed25519] {
            let (mut passkey, key) = registered(algorithm, 5);
            let challenge = statement_challenge(b"the statement of request A");
            let verify =
                |a: &Assertion, uv_required: bool| verify_assertion(&config(), &key, a, &challenge, uv_required);

            let other_request = passkey.assert(RP_ID, ORIGIN, &statement_challenge(b"the statement of request B"));
            assert!(refusal(verify(&other_request, true)).contains("another challenge"));
            assert!(
                refusal(verify(&passkey.assert(RP_ID, "https://evil.example", &challenge), true)).contains("origin")
            );
            assert!(refusal(verify(&passkey.assert("evil.example", ORIGIN, &challenge), true)).contains("RP ID"));

            passkey.client_data_type = Some("webauthn.create".into());
            assert!(refusal(verify(&passkey.assert(RP_ID, ORIGIN, &challenge), true)).contains("type"));
            passkey.client_data_type = None;

            passkey.user_verified = false;
            let unverified = passkey.assert(RP_ID, ORIGIN, &challenge);
            assert!(refusal(verify(&unverified, true)).contains("UV"));
            // A login need not be user-verified; the same assertion passes there, and says so.
            assert!(!verify(&unverified, false).unwrap().user_verified);
            passkey.user_verified = true;

            passkey.user_present = false;
            assert!(refusal(verify(&passkey.assert(RP_ID, ORIGIN, &challenge), false)).contains("UP"));
            passkey.user_present = true;

            // One bit of the signature, of the signed authenticator data, or of the client data.
            let good = passkey.assert(RP_ID, ORIGIN, &challenge);
            assert!(verify(&good, true).is_ok());
            let flip_last = |field: &str| {
                let mut bytes = from_b64url(field).unwrap();
                *bytes.last_mut().unwrap() ^= 1;
                b64url(&bytes)
            };
            let bad_signature = Assertion { signature: flip_last(&good.signature), ..good.clone() };
            assert!(verify(&bad_signature, true).is_err());
            let bad_counter = Assertion { authenticator_data: flip_last(&good.authenticator_data), ..good.clone() };
            assert!(refusal(verify(&bad_counter, true)).contains("does not verify"));
            let json = String::from_utf8(from_b64url(&good.client_data_json).unwrap()).unwrap();
            let cross = json.replace("\"crossOrigin\":false", "\"crossOrigin\":true ");
            let bad_client = Assertion { client_data_json: b64url(cross.as_bytes()), ..good.clone() };
            assert!(verify(&bad_client, true).is_err());

            // Another credential's assertion, presented under this one's id.
            let (mut other, _) = registered(algorithm, 6);
            let forged =
                Assertion { credential_id: passkey.credential_id(), ..other.assert(RP_ID, ORIGIN, &challenge) };
            assert!(refusal(verify(&forged, true)).contains("does not verify"));
        }
        // An ES256 signature checked with an Ed25519 key (and back) is refused, not misread.
        let (mut es, es_key) = registered(SoftAlgorithm::Es256, 7);
        let (mut ed, ed_key) = registered(SoftAlgorithm::Ed25519, 8);
        let challenge = statement_challenge(b"x");
        assert!(verify_assertion(&config(), &ed_key, &es.assert(RP_ID, ORIGIN, &challenge), &challenge, true).is_err());
        assert!(verify_assertion(&config(), &es_key, &ed.assert(RP_ID, ORIGIN, &challenge), &challenge, true).is_err());
    }

    #[test]
    fn soft_client_data_is_shaped_like_a_browsers() {
        // The client data a browser writes: type, challenge (base64url), origin, crossOrigin.
        let mut passkey = SoftAuthenticator::new(SoftAlgorithm::Ed25519, &mut ChaCha20Rng::seed_from_u64(9));
        let assertion = passkey.assert(RP_ID, ORIGIN, &[0xfb; 4]);
        let json = String::from_utf8(from_b64url(&assertion.client_data_json).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"type":"webauthn.get","challenge":"-_v7-w","origin":"https://localhost:8443","crossOrigin":false}"#
        );
    }
}
