//! JWS and JWT: the compact serialization's signing input, `BASE64URL(header) "."
//! BASE64URL(payload)` (RFC 7515 section 7.1), which is exactly what EdDSA signs
//! (RFC 8037 section 3.1).
//!
//! A node reads the signing input strictly, so that what it shows approvers is what
//! every JOSE library will read from the finished token: both parts are base64url
//! without padding and without stray bits, the header is one JSON object with no
//! member twice, its `alg` is `EdDSA` or `Ed25519` (RFC 9864) and nothing else (never
//! `none`), and it asks for no extension this reader does not understand (`crit`, or
//! `b64` false, which would make the payload unencoded, RFC 7797). A JWT's payload is
//! a JSON object whose registered claims have their registered types (RFC 7519
//! section 4.1). Duplicate members are refused, not resolved, because libraries
//! disagree on which one wins.
//!
//! The artifact hash is SHA-256 of the payload bytes; the summary names the header's
//! `alg`, `kid` and `typ` and, for a JWT, the registered claims present.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{hash_label, printable, Inspection};

/// The JOSE algorithm names of Ed25519: `EdDSA` (RFC 8037) and the fully specified
/// `Ed25519` (RFC 9864).
pub const ALGORITHMS: [&str; 2] = ["EdDSA", "Ed25519"];

/// The registered claims a JWT summary shows, in the order it shows them.
const SUMMARY_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// The longest value one summary field shows, in bytes (the whole summary is
/// bounded by [`super::SUMMARY_BYTES_MAX`]).
const SUMMARY_VALUE_BYTES_MAX: usize = 64;

/// A JWS signing input as a node read it.
#[derive(Clone, Debug, PartialEq)]
pub struct SigningInput {
    /// The protected header, every member once.
    pub header: Map<String, Value>,
    /// The payload bytes (decoded from base64url).
    pub payload: Vec<u8>,
    /// The claims set when the input was read as a JWT.
    pub claims: Option<Map<String, Value>>,
}

/// Reads a JWS signing input; `claims` when its payload must be a JWT claims set.
pub fn inspect(message: &[u8], claims: bool) -> Result<Inspection, String> {
    let input = read(message, claims)?;
    Ok(Inspection {
        artifact_hash: Some(hash_label("sha256", &Sha256::digest(&input.payload))),
        namespace: None,
        opaque: false,
        summary: summary(&input),
    })
}

/// Reads and checks a signing input (see the module documentation for what is refused).
pub fn read(message: &[u8], claims: bool) -> Result<SigningInput, String> {
    let text = std::str::from_utf8(message)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or("a JWS signing input is ASCII: BASE64URL(header).BASE64URL(payload)")?;
    let (header_part, payload_part) = match text.split_once('.') {
        Some((h, p)) if !p.contains('.') => (h, p),
        Some(_) => {
            return Err("it has more than one '.'; a signing input is BASE64URL(header).BASE64URL(payload), \
                        without the signature"
                .into())
        }
        None => return Err("it has no '.'; a signing input is BASE64URL(header).BASE64URL(payload)".into()),
    };
    let header_bytes = decode_part("header", header_part)?;
    let payload = decode_part("payload", payload_part)?;
    let header = object("header", &header_bytes)?;
    check_header(&header)?;
    let claims = if claims {
        let set = object("JWT claims set (the payload)", &payload)?;
        check_claims(&set)?;
        Some(set)
    } else {
        None
    };
    Ok(SigningInput { header, payload, claims })
}

/// Strict base64url: no padding, no whitespace, no non-zero trailing bits.
fn decode_part(what: &str, part: &str) -> Result<Vec<u8>, String> {
    if what == "header" && part.is_empty() {
        return Err("the header part is empty".into());
    }
    URL_SAFE_NO_PAD.decode(part).map_err(|e| format!("the {what} part is not base64url without padding ({e})"))
}

/// Parses one JSON object whose members each appear once.
fn object(what: &str, bytes: &[u8]) -> Result<Map<String, Value>, String> {
    serde_json::from_slice::<UniqueObject>(bytes)
        .map(|o| o.0)
        .map_err(|e| format!("the {what} is not one JSON object with each member once: {e}"))
}

fn check_header(header: &Map<String, Value>) -> Result<(), String> {
    match header.get("alg") {
        Some(Value::String(alg)) if ALGORITHMS.contains(&alg.as_str()) => {}
        Some(Value::String(alg)) => {
            return Err(format!(
                "the header's alg is {:?}; the cluster signs only EdDSA or Ed25519",
                printable(alg, SUMMARY_VALUE_BYTES_MAX)
            ))
        }
        Some(_) => return Err("the header's alg is not a string".into()),
        None => return Err("the header has no alg".into()),
    }
    if header.contains_key("crit") {
        return Err("the header has crit; this reader understands no JWS extension, so it refuses them all".into());
    }
    match header.get("b64") {
        None | Some(Value::Bool(true)) => {}
        Some(_) => return Err("the header's b64 is not true; unencoded payloads (RFC 7797) are not signed".into()),
    }
    for name in ["kid", "typ", "cty"] {
        if header.get(name).is_some_and(|v| !v.is_string()) {
            return Err(format!("the header's {name} is not a string"));
        }
    }
    Ok(())
}

/// The registered claims must have their registered types, so every library reads them alike.
fn check_claims(claims: &Map<String, Value>) -> Result<(), String> {
    for name in ["iss", "sub", "jti"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(format!("claim {name} is not a string"));
        }
    }
    for name in ["exp", "nbf", "iat"] {
        if claims.get(name).is_some_and(|v| !v.is_number()) {
            return Err(format!("claim {name} is not a NumericDate (a number of seconds since 1970)"));
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err("claim aud is neither a string nor an array of strings".into()),
    }
}

/// `alg=EdDSA kid=… typ=JWT iss=… aud=… exp=…`, each value cut to a few dozen bytes.
fn summary(input: &SigningInput) -> String {
    let mut fields = Vec::new();
    for name in ["alg", "kid", "typ"] {
        if let Some(value) = input.header.get(name) {
            fields.push(field(name, value));
        }
    }
    if let Some(claims) = &input.claims {
        for name in SUMMARY_CLAIMS {
            if let Some(value) = claims.get(name) {
                fields.push(field(name, value));
            }
        }
    }
    fields.join(" ")
}

fn field(name: &str, value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(|v| v.as_str().unwrap_or("?")).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    };
    format!("{name}={}", printable(&text, SUMMARY_VALUE_BYTES_MAX))
}

/// A JSON object read with a visitor that refuses a member name seen before.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
                let mut members = Map::new();
                while let Some(name) = map.next_key::<String>()? {
                    if members.contains_key(&name) {
                        return Err(A::Error::custom(format!(
                            "member {:?} appears twice",
                            printable(&name, SUMMARY_VALUE_BYTES_MAX)
                        )));
                    }
                    let value: Value = map.next_value()?;
                    members.insert(name, value);
                }
                Ok(UniqueObject(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn input(header: &str, payload: &str) -> Vec<u8> {
        format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes())).into_bytes()
    }

    const HEADER: &str = r#"{"alg":"EdDSA","kid":"k1","typ":"JWT"}"#;

    #[test]
    fn jws_jwt_reads_header_claims_and_payload_hash() {
        let claims = r#"{"iss":"synod","sub":"deploy","aud":["a","b"],"exp":1700000000,"x":{"y":[1,2]}}"#;
        let read = inspect(&input(HEADER, claims), true).unwrap();
        assert_eq!(read.artifact_hash, Some(hash_label("sha256", &Sha256::digest(claims.as_bytes()))));
        assert_eq!(read.summary, "alg=EdDSA kid=k1 typ=JWT iss=synod sub=deploy aud=a,b exp=1700000000");
        assert!(!read.opaque);
        // The RFC 8037 appendix A.4 signing input reads as a JWS (its payload is not JSON).
        let rfc8037 = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let read = inspect(rfc8037, false).unwrap();
        assert_eq!(read.summary, "alg=EdDSA");
        assert_eq!(read.artifact_hash, Some(hash_label("sha256", &Sha256::digest(b"Example of Ed25519 signing"))));
        assert!(inspect(rfc8037, true).unwrap_err().contains("claims set"));
        // An empty payload is a JWS, and Ed25519 is an algorithm name too.
        assert!(inspect(&input(r#"{"alg":"Ed25519"}"#, ""), false).is_ok());
    }

    #[test]
    fn jws_refuses_other_algorithms_and_extensions() {
        for (header, why) in [
            (r#"{"alg":"none"}"#, "\"none\""),
            (r#"{"alg":"HS256"}"#, "HS256"),
            (r#"{"alg":"eddsa"}"#, "eddsa"),
            (r#"{"alg":1}"#, "not a string"),
            (r#"{"typ":"JWT"}"#, "no alg"),
            (r#"{"alg":"EdDSA","crit":["exp"],"exp":1}"#, "crit"),
            (r#"{"alg":"EdDSA","b64":false,"crit":["b64"]}"#, "crit"),
            (r#"{"alg":"EdDSA","b64":false}"#, "b64"),
            (r#"{"alg":"EdDSA","kid":7}"#, "kid"),
            (r#"{"alg":"EdDSA","alg":"none"}"#, "twice"),
            (r#"{"alg":"none","alg":"EdDSA"}"#, "twice"),
            (r#"["alg","EdDSA"]"#, "JSON object"),
            (r#"{"alg":"EdDSA"} {}"#, "trailing"),
        ] {
            let error = inspect(&input(header, "{}"), false).unwrap_err();
            assert!(error.contains(why), "{header}: {error}");
        }
    }

    #[test]
    fn jws_refuses_malformed_signing_inputs() {
        let good = String::from_utf8(input(HEADER, "{}")).unwrap();
        let (h, p) = good.split_once('.').unwrap();
        for (message, why) in [
            (String::new(), "no '.'"),
            (h.to_string(), "no '.'"),
            (format!("{good}.c2ln"), "more than one"),
            (format!(".{p}"), "header part is empty"),
            (format!("{h}=.{p}"), "base64url"),
            (format!("{h}.{p}="), "base64url"),
            (format!("{h}.{p} "), "base64url"),
            (format!("{}.{p}", h.replace('J', "+")), "base64url"),
            // "e30" is "{}"; "e31" has non-zero bits past the last byte.
            (format!("{h}.e31"), "base64url"),
            (format!("{h}.{p}\u{e9}"), "ASCII"),
        ] {
            let error = inspect(message.as_bytes(), false).unwrap_err();
            assert!(error.contains(why), "{message:?}: {error}");
        }
        assert!(inspect(&[0xff, b'.', b'e'], false).unwrap_err().contains("ASCII"));
    }

    #[test]
    fn jwt_refuses_claims_of_the_wrong_type_and_duplicates() {
        for (claims, why) in [
            (r#"{"exp":"tomorrow"}"#, "NumericDate"),
            (r#"{"iat":null}"#, "NumericDate"),
            (r#"{"iss":["a"]}"#, "iss"),
            (r#"{"aud":[1]}"#, "aud"),
            (r#"{"sub":"a","sub":"b"}"#, "twice"),
            (r#"[1,2]"#, "JSON object"),
            ("", "JSON object"),
            (r#"{"a":1"#, "JSON object"),
        ] {
            let error = inspect(&input(HEADER, claims), true).unwrap_err();
            assert!(error.contains(why), "{claims}: {error}");
        }
    }

    #[test]
    fn jws_hostile_inputs_are_bounded_errors_or_bounded_summaries() {
        // Nesting deeper than serde_json's recursion limit is an error, not a stack overflow.
        let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(5000), "]".repeat(5000));
        assert!(inspect(&input(HEADER, &deep), true).is_err());
        // A 40 KiB claim and control characters reach the summary cut and printable.
        let claims = format!(r#"{{"iss":"{}\n","sub":"x"}}"#, "i".repeat(40_000));
        let read = inspect(&input(HEADER, &claims), true).unwrap();
        assert!(read.summary.len() < 300, "{}", read.summary);
        assert!(!read.summary.contains('\n'));
        let twice = format!(r#"{{"{}":1,"{0}":2}}"#, "k".repeat(40_000));
        assert!(inspect(&input(HEADER, &twice), true).unwrap_err().len() < 400);
    }
}
