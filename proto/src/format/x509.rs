//! X.509: the to-be-signed part of a certificate (`TBSCertificate`, RFC 5280
//! 4.1) or of a PKCS#10 certificate signing request (`CertificationRequestInfo`,
//! RFC 2986 4.1), in DER.
//!
//! A node reads the subject, serial and validity so approvers see what the key
//! vouches for. A certificate must declare Ed25519 (RFC 8410) as its signature
//! algorithm, since that is the only signature the cluster makes; a request's
//! public key must be an Ed25519 key, since a CSR is signed by its own key.
//! Nothing names an artifact hash: the summary says what is signed.

use der::{Decode, Header, Reader, SliceReader};
use spki::ObjectIdentifier;
use x509_cert::certificate::TbsCertificate;
use x509_cert::name::Name;
use x509_cert::request::CertReqInfo;

use super::Inspection;

/// id-Ed25519 (RFC 8410).
pub const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The most DER elements (TLVs, at any depth) a to-be-signed structure may hold.
/// A real certificate holds about a hundred; the bound keeps the decoder's
/// SET OF sorting (insertion sort, quadratic on reversed input) cheap on
/// hostile bytes.
pub const ELEMENTS_MAX: usize = 1024;

/// How deeply DER elements may nest (a certificate nests about eight deep).
const DEPTH_MAX: usize = 32;

/// Reads a DER `TBSCertificate` or `CertificationRequestInfo`.
pub fn inspect(message: &[u8]) -> Result<Inspection, String> {
    elements_within(message, ELEMENTS_MAX)?;
    // `from_der` refuses trailing bytes after the structure.
    let certificate_error = match TbsCertificate::from_der(message) {
        Ok(tbs) => return certificate(&tbs),
        Err(e) => e,
    };
    match CertReqInfo::from_der(message) {
        Ok(info) => request(&info),
        Err(request_error) => Err(format!(
            "neither a DER TBSCertificate ({certificate_error}) nor a DER CertificationRequestInfo ({request_error})"
        )),
    }
}

fn certificate(tbs: &TbsCertificate) -> Result<Inspection, String> {
    if tbs.signature.oid != ED25519 || tbs.signature.parameters.is_some() {
        return Err(format!(
            "the certificate's signature algorithm is {}, not Ed25519 (1.3.101.112, without parameters)",
            tbs.signature.oid
        ));
    }
    let subject = name(&tbs.subject);
    let issuer =
        if tbs.issuer == tbs.subject { "self-signed".to_string() } else { format!("issued by {}", name(&tbs.issuer)) };
    Ok(Inspection {
        summary: format!(
            "certificate for {subject}, serial {}, valid {} to {}, {issuer}",
            hex::encode(tbs.serial_number.as_bytes()),
            tbs.validity.not_before,
            tbs.validity.not_after,
        ),
        ..Inspection::default()
    })
}

fn request(info: &CertReqInfo) -> Result<Inspection, String> {
    if info.version != x509_cert::request::Version::V1 {
        return Err("the request's version must be 0 (PKCS#10 v1)".into());
    }
    let spki = &info.public_key;
    if spki.algorithm.oid != ED25519 || spki.algorithm.parameters.is_some() {
        return Err(format!(
            "the request's public key is a {} key, not Ed25519 (1.3.101.112): a CSR is signed by its own key",
            spki.algorithm.oid
        ));
    }
    if spki.subject_public_key.as_bytes().map(<[u8]>::len) != Some(32) {
        return Err("the request's Ed25519 public key is not 32 bytes".into());
    }
    Ok(Inspection { summary: format!("CSR for {}", name(&info.subject)), ..Inspection::default() })
}

fn name(name: &Name) -> String {
    if name.0.is_empty() {
        return "an empty name".into();
    }
    name.to_string()
}

/// Walks `message` as one DER element, refusing more than `max` elements in
/// all, nesting deeper than [`DEPTH_MAX`], or bytes after it. Bounds the work
/// of the decoders that run after it.
pub fn elements_within(message: &[u8], max: usize) -> Result<(), String> {
    let error = |e: der::Error| format!("not DER: {e}");
    let mut count = 0usize;
    // Each entry is the contents of a constructed element still to walk, and its depth.
    let mut pending: Vec<(&[u8], usize)> = vec![(message, 0)];
    let mut top = true;
    while let Some((bytes, depth)) = pending.pop() {
        let mut reader = SliceReader::new(bytes).map_err(error)?;
        while !reader.is_finished() {
            let header = Header::decode(&mut reader).map_err(error)?;
            let value = reader.read_slice(header.length).map_err(error)?;
            count += 1;
            if count > max {
                return Err(format!("more than {max} DER elements"));
            }
            if header.tag.is_constructed() {
                if depth + 1 > DEPTH_MAX {
                    return Err(format!("DER elements nested more than {DEPTH_MAX} deep"));
                }
                pending.push((value, depth + 1));
            }
            if top && !reader.is_finished() {
                return Err("trailing bytes after the DER structure".into());
            }
        }
        top = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use der::asn1::BitString;
    use der::Encode;
    use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::time::Validity;

    use super::*;

    fn spki(oid: ObjectIdentifier, key: &[u8]) -> SubjectPublicKeyInfoOwned {
        SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned { oid, parameters: None },
            subject_public_key: BitString::from_bytes(key).unwrap(),
        }
    }

    fn tbs(algorithm: ObjectIdentifier) -> TbsCertificate {
        let name = Name::from_str("CN=Acme Release,O=Acme").unwrap();
        TbsCertificate {
            version: x509_cert::Version::V3,
            serial_number: SerialNumber::new(&[0x42; 16]).unwrap(),
            signature: AlgorithmIdentifierOwned { oid: algorithm, parameters: None },
            issuer: name.clone(),
            validity: Validity {
                not_before: x509_cert::time::Time::UtcTime(
                    der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(1_800_000_000)).unwrap(),
                ),
                not_after: x509_cert::time::Time::UtcTime(
                    der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(1_900_000_000)).unwrap(),
                ),
            },
            subject: name,
            subject_public_key_info: spki(ED25519, &[7; 32]),
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: None,
        }
    }

    fn csr(key_algorithm: ObjectIdentifier) -> CertReqInfo {
        CertReqInfo {
            version: x509_cert::request::Version::V1,
            subject: Name::from_str("CN=Acme Release").unwrap(),
            public_key: spki(key_algorithm, &[7; 32]),
            attributes: Default::default(),
        }
    }

    #[test]
    fn x509_reads_a_certificate_and_a_request() {
        let read = inspect(&tbs(ED25519).to_der().unwrap()).unwrap();
        assert!(read.summary.starts_with("certificate for CN=Acme Release,O=Acme, serial 4242"), "{}", read.summary);
        assert!(
            read.summary.contains("valid 2027-01-15T08:00:00Z to 2030-03-17T17:46:40Z, self-signed"),
            "{}",
            read.summary
        );
        assert_eq!(read.artifact_hash, None);
        assert!(!read.opaque);
        let read = inspect(&csr(ED25519).to_der().unwrap()).unwrap();
        assert_eq!(read.summary, "CSR for CN=Acme Release");
    }

    #[test]
    fn x509_refuses_other_algorithms_and_malformed_der() {
        let rsa = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
        let error = inspect(&tbs(rsa).to_der().unwrap()).unwrap_err();
        assert!(error.contains("not Ed25519"), "{error}");
        let error = inspect(&csr(rsa).to_der().unwrap()).unwrap_err();
        assert!(error.contains("not Ed25519"), "{error}");

        let good = tbs(ED25519).to_der().unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(inspect(&trailing).unwrap_err().contains("trailing"));
        for cut in [0, 1, 2, good.len() / 2, good.len() - 1] {
            assert!(inspect(&good[..cut]).is_err(), "truncated at {cut}");
        }
        // A length far beyond the input.
        assert!(inspect(&[0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x02, 0x01, 0x01]).is_err());
        assert!(inspect(&[0x30, 0x80, 0x00, 0x00]).is_err(), "indefinite lengths are not DER");
    }

    #[test]
    fn x509_bounds_elements_and_depth() {
        // A SET OF many small elements in reverse order: refused before any sorting.
        let mut body = Vec::new();
        for i in (0..2000u16).rev() {
            body.extend_from_slice(&[0x02, 0x02, (i >> 8) as u8 | 0x01, i as u8]);
        }
        let mut set = vec![0x31, 0x82, (body.len() >> 8) as u8, body.len() as u8];
        set.extend_from_slice(&body);
        let error = inspect(&set).unwrap_err();
        assert!(error.contains("more than 1024 DER elements"), "{error}");

        let mut nested = Vec::new();
        for _ in 0..40 {
            let mut outer = vec![0x30, nested.len() as u8];
            outer.extend_from_slice(&nested);
            nested = outer;
        }
        let error = inspect(&nested).unwrap_err();
        assert!(error.contains("nested"), "{error}");
    }
}
