//! The signing path's hot pieces, one by one, as ratios to one FROST round-2
//! sign (3-of-5, one signer) measured in the same run: what each piece of a
//! cluster signature costs next to the arithmetic itself. `synod bench`
//! measures the whole cluster; this says where its CPU time can go.
//!
//! `cargo bench -p synod-node --bench signing_path` measures; add
//! `-- --output json` for one JSON line after the table. Under
//! `cargo test --benches` it runs a few iterations only, to prove it still works.

use std::collections::BTreeMap;
use std::time::Duration;

use common::{format_time, median, session, MESSAGE};
use ed25519_dalek::SigningKey;
use frost::round1::SigningCommitments;
use frost::{Identifier, SigningPackage};
use frost_ed25519 as frost;
use sha2::{Digest, Sha256};
use synod_proto::{Command, Envelope, LogEntry, SignedCommand};

mod common;

/// One measured piece.
struct Row {
    name: &'static str,
    key: &'static str,
    median: Duration,
    note: &'static str,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let json = args.windows(2).any(|w| w[0] == "--output" && w[1] == "json");
    let n = if measuring { 2_000 } else { 20 };

    let s = session();
    let (id, key_package) = s.packages.iter().next().expect("a signer");
    let nonces = &s.nonces[id];
    // Measurement only: real signers use each nonce once.
    let sign = median(n, || {
        std::hint::black_box(frost::round2::sign(&s.package, nonces, key_package).expect("sign"));
    });
    let commit = median(n, || {
        std::hint::black_box(frost::round1::commit(key_package.signing_share(), &mut frost::rand_core::OsRng));
    });
    let commitments_bytes = s.package.signing_commitments()[id].serialize().expect("serialise commitments");
    let parse_commitments = median(n, || {
        std::hint::black_box(SigningCommitments::deserialize(&commitments_bytes).expect("parse commitments"));
    });
    let build_package = median(n, || {
        let package = SigningPackage::new(s.package.signing_commitments().clone(), MESSAGE);
        std::hint::black_box(hex::encode(package.serialize().expect("serialise package")));
    });
    let package_hex = hex::encode(s.package.serialize().expect("serialise package"));
    let signer_parse = median(n, || {
        let bytes = hex::decode(&package_hex).expect("hex");
        std::hint::black_box(Sha256::digest(&bytes));
        std::hint::black_box(SigningPackage::deserialize(&bytes).expect("parse package"));
    });
    let shares: BTreeMap<Identifier, _> = s
        .nonces
        .iter()
        .map(|(id, nonces)| (*id, frost::round2::sign(&s.package, nonces, &s.packages[id]).expect("sign")))
        .collect();
    let aggregate = median(n, || {
        std::hint::black_box(
            frost::aggregate_custom(&s.package, &shares, &s.public, frost::CheaterDetection::AllCheaters)
                .expect("aggregate"),
        );
    });
    let signature = frost::aggregate(&s.package, &shares, &s.public).expect("aggregate");
    let signature = ed25519_dalek::Signature::from_slice(&signature.serialize().expect("serialise")).expect("64 bytes");
    let group: [u8; 32] = s.public.verifying_key().serialize().expect("serialise").try_into().expect("32 bytes");
    // What a node does before it stores a result: decode the group key, RFC 8032 strict verify.
    let verify = median(n, || {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&group).expect("group key");
        key.verify_strict(MESSAGE, &signature).expect("verify");
    });
    let operator = SigningKey::from_bytes(&[7; 32]);
    let envelope = Envelope {
        cluster_id: "c-bench".into(),
        command_id: format!("{:032x}", 1),
        issued_at_ms: 1_800_000_000_000,
        expires_at_ms: 1_800_000_300_000,
        command: Command::SignRequest {
            request_id: "bench-request-0001".into(),
            key: "bench".into(),
            message: hex::encode(MESSAGE),
            purpose: String::new(),
            environment: String::new(),
            attributes: Default::default(),
        },
    };
    let signed = SignedCommand::sign(&envelope, &operator);
    let envelope_verify = median(n, || {
        std::hint::black_box(signed.verify().expect("verify the envelope"));
    });
    let entry = LogEntry { time_ms: 1_800_000_000_001, command: signed.clone() };
    let entry_json = median(n, || {
        let bytes = serde_json::to_vec(&entry).expect("encode");
        std::hint::black_box(serde_json::from_slice::<LogEntry>(&bytes).expect("decode"));
    });

    let rows = [
        Row { name: "FROST round-2 sign", key: "frost_sign", median: sign, note: "baseline: one signer's share" },
        Row { name: "preprocess one nonce pair", key: "commit", median: commit, note: "round1::commit, per slot" },
        Row {
            name: "parse one signer's commitments",
            key: "parse_commitments",
            median: parse_commitments,
            note: "coordinator, per slot: 2 points, torsion-checked",
        },
        Row {
            name: "build a signing package",
            key: "build_package",
            median: build_package,
            note: "coordinator, per session: new + serialise + hex",
        },
        Row {
            name: "parse a signing package",
            key: "signer_parse",
            median: signer_parse,
            note: "each signer: hex + SHA-256 + 6 points checked",
        },
        Row {
            name: "aggregate, all cheaters checked",
            key: "aggregate",
            median: aggregate,
            note: "coordinator, per session: verifies each share",
        },
        Row { name: "verify the signature", key: "verify", median: verify, note: "each node, applying the result" },
        Row {
            name: "verify an operator envelope",
            key: "envelope_verify",
            median: envelope_verify,
            note: "each node, per command: JSON + Ed25519",
        },
        Row {
            name: "log entry JSON round trip",
            key: "entry_json",
            median: entry_json,
            note: "per entry: log store and Raft frames",
        },
    ];
    if !measuring {
        println!("(test mode: few iterations; run `cargo bench -p synod-node --bench signing_path` to measure)");
    }
    println!("{:<34} {:>10} {:>12}  note", "piece (3-of-5)", "median", "x FROST sign");
    for row in &rows {
        println!(
            "{:<34} {:>10} {:>12.2}  {}",
            row.name,
            format_time(row.median),
            row.median.as_secs_f64() / sign.as_secs_f64(),
            row.note
        );
    }
    if json {
        let fields: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "\"{}_us\":{:.2},\"{}_ratio\":{:.3}",
                    r.key,
                    r.median.as_secs_f64() * 1e6,
                    r.key,
                    r.median.as_secs_f64() / sign.as_secs_f64()
                )
            })
            .collect();
        println!("{{{}}}", fields.join(","));
    }
}
