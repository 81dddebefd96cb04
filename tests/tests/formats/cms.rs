//! X.509 and CMS through a real cluster: a self-signed certificate and a PKCS#10 request that
//! OpenSSL accepts, a detached CMS signature pyHanko validates as intact and trusted (and not
//! intact once the document changes), and a PAdES-sealed PDF `pyhanko sign validate` accepts.

use std::path::Path;

use serde_json::Value;
use synod_tests::{fails, ok, Cluster};

use super::{cluster_with_key, tool, write};

const SUBJECT: &str = "CN=Acme Release,O=Acme";

/// Makes a self-signed certificate for key `key` into `cert.pem`; returns its path.
fn certificate(cluster: &Cluster, key: &str) -> std::path::PathBuf {
    let cert = cluster.path("cert.pem");
    let out = ok(&cluster.synod(
        1,
        &[
            "key",
            "certificate",
            key,
            "--self-signed",
            "--subject",
            SUBJECT,
            "--days",
            "30",
            "--out",
            s(&cert),
            "-o",
            "json",
        ],
    ));
    let json: Value = serde_json::from_str(&out).expect("certificate JSON");
    let shown = ok(&cluster.synod(2, &["request", "show", json["request_id"].as_str().unwrap(), "-o", "json"]));
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["format"]["format"], "x509");
    let summary = shown["format"]["summary"].as_str().unwrap();
    assert!(summary.starts_with("certificate for CN=Acme Release,O=Acme, serial "), "{summary}");
    assert!(summary.contains(json["serial"].as_str().unwrap()), "{summary}");
    cert
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn cms_certificate_and_csr_of_a_cluster_key_are_accepted_by_openssl() {
    let cluster = cluster_with_key("release");
    let cert = certificate(&cluster, "release");
    let (read, text) = tool("openssl", &["x509", "-in", s(&cert), "-noout", "-text"], None);
    assert!(read, "{text}");
    for expected in
        ["ED25519", "CN = Acme Release", "CA:FALSE", "Digital Signature, Non Repudiation", "Subject Key Identifier"]
    {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    let (verified, text) = tool("openssl", &["verify", "-CAfile", s(&cert), s(&cert)], None);
    assert!(verified && text.contains(": OK"), "{text}");
    ok(&cluster.synod(1, &["verify", "--format", "x509", "--key", "release", "--in", s(&cert)]));

    let csr = cluster.path("req.pem");
    let out = ok(&cluster.synod(3, &["key", "csr", "release", "--subject", SUBJECT, "--out", s(&csr), "-o", "json"]));
    let json: Value = serde_json::from_str(&out).unwrap();
    let shown: Value = serde_json::from_str(&ok(
        &cluster.synod(1, &["request", "show", json["request_id"].as_str().unwrap(), "-o", "json"])
    ))
    .unwrap();
    assert_eq!(shown["format"]["summary"], "CSR for CN=Acme Release,O=Acme");
    let (verified, text) = tool("openssl", &["req", "-verify", "-in", s(&csr), "-noout"], None);
    assert!(verified && text.contains("verify OK"), "{text}");
    ok(&cluster.synod(1, &["verify", "--format", "x509", "--key", "release", "--in", s(&csr)]));

    // A CSR with one changed signature byte: OpenSSL refuses it (OpenSSL 3.0 says so but may
    // still exit 0, so the text decides).
    let der_path = cluster.path("req.der");
    let (converted, text) = tool("openssl", &["req", "-in", s(&csr), "-outform", "DER", "-out", s(&der_path)], None);
    assert!(converted, "{text}");
    let mut der = std::fs::read(&der_path).unwrap();
    let last = der.len() - 1;
    der[last] ^= 1;
    let bad = write(&cluster, "bad-req.der", &der);
    let (verified, text) = tool("openssl", &["req", "-verify", "-inform", "DER", "-in", s(&bad), "-noout"], None);
    assert!(!verified || text.contains("verify failure"), "a tampered CSR verifies: {text}");
    assert!(!text.contains("verify OK"), "{text}");

    let error = fails(&cluster.synod(1, &["key", "certificate", "release", "--subject", SUBJECT]));
    assert!(error.contains("--self-signed"), "{error}");
}

/// Validates a detached CMS signature with pyHanko, trusting `cert`; prints its verdict.
const PYHANKO_DETACHED: &str = r#"
import asyncio, sys
from asn1crypto import cms, pem, x509
from pyhanko.sign.validation import async_validate_detached_cms
from pyhanko_certvalidator import ValidationContext

cert_bytes = open(sys.argv[1], "rb").read()
if pem.detect(cert_bytes):
    cert_bytes = pem.unarmor(cert_bytes)[2]
context = ValidationContext(trust_roots=[x509.Certificate.load(cert_bytes)])
signed_data = cms.ContentInfo.load(open(sys.argv[3], "rb").read())["content"]
status = asyncio.run(
    async_validate_detached_cms(open(sys.argv[2], "rb").read(), signed_data, signer_validation_context=context)
)
print(f"intact={status.intact} valid={status.valid} trusted={status.trusted}")
print(status.pretty_print_details())
"#;

#[test]
fn cms_detached_signature_is_validated_by_pyhanko_and_a_changed_byte_is_not_intact() {
    let cluster = cluster_with_key("release");
    let cert = certificate(&cluster, "release");
    // Larger than a sign request's message: only the signed attributes go to the cluster.
    let document: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let path = write(&cluster, "document.bin", &document);
    let p7s = cluster.path("document.p7s");
    let out = ok(&cluster.synod(
        2,
        &["sign", "release", "--format", "cms", "--cert", s(&cert), "--in", s(&path), "--out", s(&p7s), "-o", "json"],
    ));
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["format"]["format"], "cms");
    use sha2::Digest;
    assert_eq!(info["format"]["artifact_hash"], format!("sha512:{}", hex::encode(sha2::Sha512::digest(&document))));
    assert!(info["format"]["summary"].as_str().unwrap().contains("signing time"), "{info}");
    let pem = write(&cluster, "document.p7s.pem", info["cms"].as_str().unwrap().as_bytes());
    let out =
        ok(&cluster
            .synod(3, &["verify", "--format", "cms", "--key", "release", "--in", s(&path), "--signature", s(&pem)]));
    assert!(out.contains("signature is valid (cms"), "the PEM form verifies too: {out}");

    let script = write(&cluster, "validate.py", PYHANKO_DETACHED.as_bytes());
    let (ran, verdict) = tool("python3", &[s(&script), s(&cert), s(&path), s(&p7s)], None);
    assert!(ran, "{verdict}");
    assert!(verdict.contains("intact=True valid=True trusted=True"), "{verdict}");
    let pyhanko_cli = |document: &Path| {
        let args = ["sign", "validate", "--no-revocation-check", "--trust-replace", "--trust", s(&cert)];
        tool("pyhanko", &[&args[..], &["--detached", s(&p7s), s(document)]].concat(), None)
    };
    let (valid, verdict) = pyhanko_cli(&path);
    assert!(valid && verdict.contains("INTACT:TRUSTED"), "{verdict}");
    let out =
        ok(&cluster
            .synod(1, &["verify", "--format", "cms", "--key", "release", "--in", s(&path), "--signature", s(&p7s)]));
    assert!(out.contains("signature is valid (cms"), "{out}");

    let mut tampered = document.clone();
    tampered[100_000] ^= 1;
    let tampered = write(&cluster, "tampered.bin", &tampered);
    let (ran, verdict) = tool("python3", &[s(&script), s(&cert), s(&tampered), s(&p7s)], None);
    assert!(ran, "{verdict}");
    assert!(verdict.contains("intact=False"), "{verdict}");
    let (valid, verdict) = pyhanko_cli(&tampered);
    assert!(!valid && !verdict.contains("INTACT"), "{verdict}");
    let error = fails(
        &cluster
            .synod(1, &["verify", "--format", "cms", "--key", "release", "--in", s(&tampered), "--signature", s(&p7s)]),
    );
    assert!(error.contains("is not the signed document"), "{error}");

    // A certificate of another key: refused before anything is signed.
    ok(&cluster.synod(1, &["key", "create", "other", "-t", "2", "--open-policy"]));
    let error = fails(
        &cluster
            .synod(1, &["sign", "other", "--format", "cms", "--cert", s(&cert), "--in", s(&path), "--out", s(&p7s)]),
    );
    assert!(error.contains("the certificate is not for key other"), "{error}");
}

/// A one-page PDF with a classic cross-reference table, as most writers make them.
fn one_page_pdf() -> Vec<u8> {
    let content = "BT /F1 24 Tf 72 720 Td (Contract: Acme sells one anvil) Tj ET";
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_string(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for offset in offsets {
        pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    let id = "<8a1f0c2e9d3b4a5f6e7d8c9b0a1f2e3d>";
    pdf.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R /ID [{id} {id}] >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1)
            .as_bytes(),
    );
    pdf
}

#[test]
fn cms_pdf_seal_is_accepted_by_pyhanko_and_a_changed_byte_is_rejected() {
    let cluster = cluster_with_key("release");
    let cert = certificate(&cluster, "release");
    let contract = write(&cluster, "contract.pdf", &one_page_pdf());
    let sealed = cluster.path("sealed.pdf");
    let out = ok(&cluster.synod(
        2,
        &[
            "seal",
            "release",
            "--cert",
            s(&cert),
            "--in",
            s(&contract),
            "--out",
            s(&sealed),
            "--reason",
            "Approved",
            "-o",
            "json",
        ],
    ));
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["format"]["format"], "cms");
    let sealed_bytes = std::fs::read(&sealed).unwrap();
    assert!(sealed_bytes.starts_with(&one_page_pdf()), "the seal is an incremental update");

    let validate = |path: &Path| {
        tool(
            "pyhanko",
            &["sign", "validate", "--no-revocation-check", "--trust-replace", "--trust", s(&cert), s(path)],
            None,
        )
    };
    let (valid, verdict) = validate(&sealed);
    assert!(valid, "{verdict}");
    assert!(verdict.contains("INTACT:TRUSTED"), "{verdict}");

    // One byte of the contract's text, inside the signed range.
    let at = sealed_bytes.windows(8).position(|w| w == b"Contract").unwrap();
    let mut tampered = sealed_bytes.clone();
    tampered[at] = b'K';
    let tampered = write(&cluster, "tampered.pdf", &tampered);
    let (valid, verdict) = validate(&tampered);
    assert!(!valid || !verdict.contains("INTACT:TRUSTED"), "{verdict}");
}
