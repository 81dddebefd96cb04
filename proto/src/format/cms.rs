//! CMS: the DER `SignedAttributes` of a `SignerInfo` (RFC 5652 5.3), encoded as
//! a SET (tag 0x31) as RFC 5652 5.4 says the signature covers, for Ed25519
//! signatures per RFC 8419 (a PDF seal's CMS is the same).
//!
//! A node requires the content-type and message-digest attributes (one value
//! each) and takes the artifact hash from the message digest; it shows the
//! signing time when there is one. The SET must be canonical DER (sorted, no
//! duplicates), since the signature covers exactly these bytes.

use der::asn1::{ObjectIdentifier, OctetStringRef};
use der::{Decode, Encode};
use x509_cert::attr::Attributes;
use x509_cert::time::Time;

use super::{hash_label, Inspection};

/// id-contentType (RFC 5652 11.1).
pub const CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
/// id-messageDigest (RFC 5652 11.2).
pub const MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// id-signingTime (RFC 5652 11.3).
pub const SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
/// id-data (RFC 5652 4).
pub const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
/// id-aa-signingCertificateV2 (RFC 5035 3).
pub const SIGNING_CERTIFICATE_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");

/// The most DER elements a signed-attributes SET may hold (a PAdES one holds about 30).
pub const ELEMENTS_MAX: usize = 256;

/// Reads a DER SET of signed attributes.
pub fn inspect(message: &[u8]) -> Result<Inspection, String> {
    if message.first() != Some(&0x31) {
        return Err(
            "the signed attributes must be a DER SET (tag 0x31, RFC 5652 5.4), not the [0] IMPLICIT form of the SignerInfo"
                .into(),
        );
    }
    super::x509::elements_within(message, ELEMENTS_MAX)?;
    let attributes = Attributes::from_der(message).map_err(|e| format!("not a DER SET of attributes: {e}"))?;
    // The decoder sorts a SET OF; the bytes must already be in that order.
    if attributes.to_der().map_err(|e| e.to_string())? != message {
        return Err("the attributes are not in DER order (a SET OF is sorted by encoding)".into());
    }
    let mut content_type = None;
    let mut digest = None;
    let mut signing_time = None;
    for (i, attribute) in attributes.iter().enumerate() {
        if attributes.iter().take(i).any(|a| a.oid == attribute.oid) {
            return Err(format!("attribute {} appears twice", attribute.oid));
        }
        let single = || match attribute.values.as_slice() {
            [value] => Ok(value),
            values => Err(format!("attribute {} must have exactly one value, not {}", attribute.oid, values.len())),
        };
        match attribute.oid {
            CONTENT_TYPE => {
                let oid = single()?.decode_as::<ObjectIdentifier>().map_err(|e| format!("content-type: {e}"))?;
                content_type = Some(oid);
            }
            MESSAGE_DIGEST => {
                let value = single()?;
                let bytes = value.decode_as::<OctetStringRef<'_>>().map_err(|e| format!("message-digest: {e}"))?;
                digest = Some(bytes.as_bytes().to_vec());
            }
            SIGNING_TIME => {
                let value = single()?.to_der().map_err(|e| format!("signing-time: {e}"))?;
                let time = Time::from_der(&value).map_err(|e| format!("signing-time: {e}"))?;
                signing_time = Some(time);
            }
            _ => {}
        }
    }
    let content_type = content_type.ok_or("the content-type attribute is missing (RFC 5652 11.1)")?;
    let digest = digest.ok_or("the message-digest attribute is missing (RFC 5652 11.2)")?;
    // The digest algorithm is named in the SignerInfo, outside the signed
    // attributes, so the label comes from the digest's length: 64 bytes is
    // SHA-512 (what RFC 8419 requires with Ed25519), 32 bytes SHA-256.
    let algorithm = match digest.len() {
        64 => "sha512",
        32 => "sha256",
        n => return Err(format!("the message digest is {n} bytes; expected a SHA-512 (64) or SHA-256 (32) digest")),
    };
    let artifact_hash = hash_label(algorithm, &digest);
    let content = if content_type == ID_DATA { "id-data".to_string() } else { content_type.to_string() };
    let mut summary = format!("CMS signed attributes: content type {content}");
    if let Some(time) = signing_time {
        summary.push_str(&format!(", signing time {time}"));
    }
    if attributes.iter().any(|a| a.oid == SIGNING_CERTIFICATE_V2) {
        summary.push_str(", names its certificate (signing-certificate-v2)");
    }
    Ok(Inspection { artifact_hash: Some(artifact_hash), summary, ..Inspection::default() })
}

#[cfg(test)]
mod tests {
    use der::asn1::{OctetString, SetOfVec, UtcTime};
    use der::Any;
    use x509_cert::attr::Attribute;

    use super::*;

    fn attribute(oid: ObjectIdentifier, values: Vec<Any>) -> Attribute {
        Attribute { oid, values: SetOfVec::try_from(values).unwrap() }
    }

    fn digest(bytes: &[u8]) -> Any {
        Any::encode_from(&OctetString::new(bytes).unwrap()).unwrap()
    }

    fn content_type() -> Attribute {
        attribute(CONTENT_TYPE, vec![Any::encode_from(&ID_DATA).unwrap()])
    }

    fn encode(attributes: Vec<Attribute>) -> Vec<u8> {
        SetOfVec::try_from(attributes).unwrap().to_der().unwrap()
    }

    #[test]
    fn cms_reads_the_digest_and_the_signing_time() {
        let time = UtcTime::from_unix_duration(std::time::Duration::from_secs(1_800_000_000)).unwrap();
        let message = encode(vec![
            content_type(),
            attribute(MESSAGE_DIGEST, vec![digest(&[0xab; 64])]),
            attribute(SIGNING_TIME, vec![Any::encode_from(&time).unwrap()]),
        ]);
        let read = inspect(&message).unwrap();
        assert_eq!(read.artifact_hash, Some(format!("sha512:{}", "ab".repeat(64))));
        assert_eq!(read.summary, "CMS signed attributes: content type id-data, signing time 2027-01-15T08:00:00Z");
        let read = inspect(&encode(vec![content_type(), attribute(MESSAGE_DIGEST, vec![digest(&[1; 32])])])).unwrap();
        assert_eq!(read.artifact_hash, Some(format!("sha256:{}", "01".repeat(32))));
    }

    #[test]
    fn cms_refuses_missing_doubled_and_misordered_attributes() {
        let only_type = encode(vec![content_type()]);
        assert!(inspect(&only_type).unwrap_err().contains("message-digest attribute is missing"));
        let only_digest = encode(vec![attribute(MESSAGE_DIGEST, vec![digest(&[1; 64])])]);
        assert!(inspect(&only_digest).unwrap_err().contains("content-type attribute is missing"));
        let two_values =
            encode(vec![content_type(), attribute(MESSAGE_DIGEST, vec![digest(&[1; 64]), digest(&[2; 64])])]);
        assert!(inspect(&two_values).unwrap_err().contains("exactly one value, not 2"));
        let twice = encode(vec![
            content_type(),
            attribute(MESSAGE_DIGEST, vec![digest(&[1; 64])]),
            attribute(MESSAGE_DIGEST, vec![digest(&[2; 64])]),
        ]);
        assert!(inspect(&twice).unwrap_err().contains("appears twice"));
        let short = encode(vec![content_type(), attribute(MESSAGE_DIGEST, vec![digest(&[1; 20])])]);
        assert!(inspect(&short).unwrap_err().contains("20 bytes"));

        // The same two attributes, swapped: not DER.
        let a = content_type().to_der().unwrap();
        let b = attribute(MESSAGE_DIGEST, vec![digest(&[1; 64])]).to_der().unwrap();
        let (first, second) = if a < b { (b, a) } else { (a, b) };
        let mut swapped = vec![0x31, (first.len() + second.len()) as u8];
        swapped.extend_from_slice(&first);
        swapped.extend_from_slice(&second);
        assert!(inspect(&swapped).unwrap_err().contains("DER order"));
    }

    #[test]
    fn cms_refuses_the_implicit_tag_truncation_and_trailing_bytes() {
        let good = encode(vec![content_type(), attribute(MESSAGE_DIGEST, vec![digest(&[1; 64])])]);
        let mut implicit = good.clone();
        implicit[0] = 0xa0;
        assert!(inspect(&implicit).unwrap_err().contains("tag 0x31"));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(inspect(&trailing).is_err());
        for cut in [1, 2, good.len() / 2, good.len() - 1] {
            assert!(inspect(&good[..cut]).is_err(), "truncated at {cut}");
        }
        assert!(inspect(&[0x31, 0x84, 0x7f, 0xff, 0xff, 0xff]).is_err());
        assert!(inspect(&[0x31, 0x00]).is_err());
        let wrong_value = encode(vec![
            attribute(CONTENT_TYPE, vec![digest(&[1; 4])]),
            attribute(MESSAGE_DIGEST, vec![digest(&[1; 64])]),
        ]);
        assert!(inspect(&wrong_value).unwrap_err().contains("content-type"));
    }
}
