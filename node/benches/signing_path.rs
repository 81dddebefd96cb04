//! The signing path's hot pieces, one by one, as criterion benchmarks and as
//! ratios to one FROST round-2 sign (3-of-5, one signer) measured in the same
//! run: what each piece of a cluster signature costs next to the arithmetic
//! itself. `synod bench` measures the whole cluster; this says where its CPU
//! time can go.
//!
//! `cargo bench -p synod-node --bench signing_path` measures: criterion's
//! report per piece, then the ratio table and one JSON line. Criterion's flags
//! work as usual (`-- --save-baseline before` on one commit, `-- --baseline
//! before` on the next to compare). Under `cargo test --benches` each piece runs
//! once, to prove it still works.

use std::collections::BTreeMap;

use common::{criterion, print_ratios, session, Pieces, Row, MESSAGE};
use ed25519_dalek::SigningKey;
use frost::round1::SigningCommitments;
use frost::{Identifier, SigningPackage};
use frost_ed25519 as frost;
use sha2::{Digest, Sha256};
use synod_proto::{Command, Envelope, LogEntry, SignedCommand};

mod common;

fn main() {
    let mut c = criterion();
    let mut benches = c.benchmark_group("signing_path");
    let pieces = Pieces::default();

    let s = session();
    let (id, key_package) = s.packages.iter().next().expect("a signer");
    let nonces = &s.nonces[id];
    // Measurement only: real signers use each nonce once.
    let sign = pieces.measure(&mut benches, "frost_sign", || {
        std::hint::black_box(frost::round2::sign(&s.package, nonces, key_package).expect("sign"));
    });
    let commit = pieces.measure(&mut benches, "commit", || {
        std::hint::black_box(frost::round1::commit(key_package.signing_share(), &mut frost::rand_core::OsRng));
    });
    let commitments_bytes = s.package.signing_commitments()[id].serialize().expect("serialise commitments");
    let parse_commitments = pieces.measure(&mut benches, "parse_commitments", || {
        std::hint::black_box(SigningCommitments::deserialize(&commitments_bytes).expect("parse commitments"));
    });
    let build_package = pieces.measure(&mut benches, "build_package", || {
        let package = SigningPackage::new(s.package.signing_commitments().clone(), MESSAGE);
        std::hint::black_box(hex::encode(package.serialize().expect("serialise package")));
    });
    let package_hex = hex::encode(s.package.serialize().expect("serialise package"));
    let signer_parse = pieces.measure(&mut benches, "signer_parse", || {
        let bytes = hex::decode(&package_hex).expect("hex");
        std::hint::black_box(Sha256::digest(&bytes));
        std::hint::black_box(SigningPackage::deserialize(&bytes).expect("parse package"));
    });
    let shares: BTreeMap<Identifier, _> = s
        .nonces
        .iter()
        .map(|(id, nonces)| (*id, frost::round2::sign(&s.package, nonces, &s.packages[id]).expect("sign")))
        .collect();
    let aggregate = pieces.measure(&mut benches, "aggregate", || {
        std::hint::black_box(
            frost::aggregate_custom(&s.package, &shares, &s.public, frost::CheaterDetection::AllCheaters)
                .expect("aggregate"),
        );
    });
    let signature = frost::aggregate(&s.package, &shares, &s.public).expect("aggregate");
    let signature = ed25519_dalek::Signature::from_slice(&signature.serialize().expect("serialise")).expect("64 bytes");
    let group: [u8; 32] = s.public.verifying_key().serialize().expect("serialise").try_into().expect("32 bytes");
    // What a node does before it stores a result: decode the group key, RFC 8032 strict verify.
    let verify = pieces.measure(&mut benches, "verify", || {
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
            format: None,
            trusted_comment: None,
            request_id: "bench-request-0001".into(),
            key: "bench".into(),
            message: hex::encode(MESSAGE),
            purpose: String::new(),
            environment: String::new(),
            attributes: Default::default(),
            version: None,
        },
    };
    let signed = SignedCommand::sign(&envelope, &operator);
    let envelope_verify = pieces.measure(&mut benches, "envelope_verify", || {
        std::hint::black_box(signed.verify().expect("verify the envelope"));
    });
    let entry = LogEntry { time_ms: 1_800_000_000_001, command: signed.clone() };
    let entry_json = pieces.measure(&mut benches, "entry_json", || {
        let bytes = serde_json::to_vec(&entry).expect("encode");
        std::hint::black_box(serde_json::from_slice::<LogEntry>(&bytes).expect("decode"));
    });

    benches.finish();
    c.final_summary();
    let rows = [
        Row {
            name: "FROST round-2 sign",
            key: "frost_sign",
            median: sign,
            note: "baseline: one signer's share".into(),
        },
        Row {
            name: "preprocess one nonce pair",
            key: "commit",
            median: commit,
            note: "round1::commit, per slot".into(),
        },
        Row {
            name: "parse one signer's commitments",
            key: "parse_commitments",
            median: parse_commitments,
            note: "coordinator, per slot: 2 points, torsion-checked".into(),
        },
        Row {
            name: "build a signing package",
            key: "build_package",
            median: build_package,
            note: "coordinator, per session: new + serialise + hex".into(),
        },
        Row {
            name: "parse a signing package",
            key: "signer_parse",
            median: signer_parse,
            note: "each signer: hex + SHA-256 + 6 points checked".into(),
        },
        Row {
            name: "aggregate, all cheaters checked",
            key: "aggregate",
            median: aggregate,
            note: "coordinator, per session: verifies each share".into(),
        },
        Row {
            name: "verify the signature",
            key: "verify",
            median: verify,
            note: "each node, applying the result".into(),
        },
        Row {
            name: "verify an operator envelope",
            key: "envelope_verify",
            median: envelope_verify,
            note: "each node, per command: JSON + Ed25519".into(),
        },
        Row {
            name: "log entry JSON round trip",
            key: "entry_json",
            median: entry_json,
            note: "per entry: log store and Raft frames".into(),
        },
    ];
    print_ratios(&rows);
}
