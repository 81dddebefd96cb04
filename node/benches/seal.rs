//! What the KEK costs on the signing path: the median time of one FROST
//! round-2 sign (3-of-5, one signer) next to sealing and unsealing a FROST key
//! package on each KEK backend, in one run, as ratios to the sign.
//!
//! `cargo bench -p synod-node --bench seal` measures; add `-- --output json`
//! for one JSON line after the table. Under `cargo test --benches` it runs a
//! few iterations only, to prove it still works. The pkcs11 row needs SoftHSM2
//! (`apt-get install softhsm2`); without it the row says it was skipped.

use std::path::Path;
use std::time::Duration;

use common::{format_time, median, session};
use frost_ed25519 as frost;
use synod_node::kek::{init_softhsm_token, Kek, Pkcs11Config, Pkcs11Kek, SoftKek, SOFTHSM_MODULE};
use synod_node::sealed::{Purpose, SealContext};
use zeroize::Zeroizing;

mod common;

/// One measured operation.
struct Row {
    name: &'static str,
    /// Median time per operation; `None` when skipped.
    median: Option<Duration>,
    note: String,
}

/// A serialized FROST key package and the median of a round-2 sign with it.
fn frost_sign(iterations: usize) -> (Vec<u8>, Duration) {
    let s = session();
    let (id, package) = s.packages.iter().next().expect("a signer");
    let signer_nonces = &s.nonces[id];
    // Measurement only: real signers use each nonce once.
    let time = median(iterations, || {
        std::hint::black_box(frost::round2::sign(&s.package, signer_nonces, package).expect("sign"));
    });
    (package.serialize().expect("serialize the key package"), time)
}

fn unseal_only(kek: &dyn Kek, aad: &[u8], secret: &[u8], iterations: usize) -> Duration {
    let blob = kek.seal(aad, secret).expect("seal");
    median(iterations, || {
        std::hint::black_box(kek.unseal(aad, &blob).expect("unseal"));
    })
}

fn seal_unseal(kek: &dyn Kek, aad: &[u8], secret: &[u8], iterations: usize) -> Duration {
    median(iterations, || {
        let blob = kek.seal(aad, secret).expect("seal");
        let opened = kek.unseal(aad, &blob).expect("unseal");
        assert_eq!(opened.len(), secret.len());
    })
}

/// A SoftHSM2 token with a KEK in `dir`, or why there is none.
fn softhsm_kek(dir: &Path) -> Result<Pkcs11Kek, String> {
    if !Path::new(SOFTHSM_MODULE).exists() {
        return Err(format!("skipped: {SOFTHSM_MODULE} not found (apt-get install softhsm2)"));
    }
    let conf = init_softhsm_token(dir, "synod-bench", "12345678", "4321").map_err(|e| e.to_string())?;
    // This process has not loaded the module yet and runs one thread, so setting its environment is safe here.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let cfg = Pkcs11Config {
        module: SOFTHSM_MODULE.into(),
        token_label: "synod-bench".into(),
        key_label: "synod-kek".into(),
        pin: Zeroizing::new("4321".into()),
    };
    Pkcs11Kek::generate_key(&cfg).map_err(|e| e.to_string())?;
    Pkcs11Kek::open(&cfg).map_err(|e| e.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let json = args.windows(2).any(|w| w[0] == "--output" && w[1] == "json");
    let scale = if measuring { 1 } else { 100 };

    let (key_package, sign) = frost_sign(2_000 / scale);
    let ctx = SealContext {
        cluster_id: "c-bench".into(),
        node_id: 1,
        key_id: "bench".into(),
        key_version: 1,
        generation: 0,
        purpose: Purpose::KeyPackage,
    };
    let aad = ctx.aad();
    let dir = tempfile::tempdir().expect("create a temp dir");
    let soft = SoftKek::generate_file(&dir.path().join("kek")).expect("generate a KEK file");
    let soft_time = seal_unseal(&soft, &aad, &key_package, 20_000 / scale);
    let soft_unseal = unseal_only(&soft, &aad, &key_package, 20_000 / scale);
    let derive = median(if measuring { 3 } else { 1 }, || {
        std::hint::black_box(SoftKek::from_passphrase("a bench passphrase", &[7; 16]).expect("derive"));
    });
    let (pkcs11_time, pkcs11_unseal, pkcs11_note) = match softhsm_kek(&dir.path().join("softhsm")) {
        Ok(kek) => (
            Some(seal_unseal(&kek, &aad, &key_package, 5_000 / scale)),
            Some(unseal_only(&kek, &aad, &key_package, 5_000 / scale)),
            "SoftHSM2, in-token AES-GCM".to_string(),
        ),
        Err(why) => (None, None, why),
    };

    let rows = [
        Row { name: "FROST round-2 sign (3-of-5)", median: Some(sign), note: "frost-ed25519 3.0, one signer".into() },
        Row {
            name: "soft seal+unseal",
            median: Some(soft_time),
            note: format!("{}-byte key package, AES-256-GCM in process", key_package.len()),
        },
        Row { name: "soft unseal", median: Some(soft_unseal), note: "what a sign would add per use".into() },
        Row { name: "pkcs11 seal+unseal", median: pkcs11_time, note: pkcs11_note.clone() },
        Row { name: "pkcs11 unseal", median: pkcs11_unseal, note: pkcs11_note },
        Row { name: "passphrase KEK derivation", median: Some(derive), note: "Argon2id, once per node start".into() },
    ];
    if !measuring {
        println!("(test mode: few iterations; run `cargo bench -p synod-node --bench seal` to measure)");
    }
    println!("{:<30} {:>12} {:>12}  note", "operation", "median", "x FROST sign");
    for row in &rows {
        match row.median {
            Some(t) => println!(
                "{:<30} {:>12} {:>12.2}  {}",
                row.name,
                format_time(t),
                t.as_secs_f64() / sign.as_secs_f64(),
                row.note
            ),
            None => println!("{:<30} {:>12} {:>12}  {}", row.name, "-", "-", row.note),
        }
    }
    if json {
        let us = |d: Option<Duration>| d.map_or("null".to_string(), |d| format!("{:.2}", d.as_secs_f64() * 1e6));
        let ratio = |d: Option<Duration>| {
            d.map_or("null".to_string(), |d| format!("{:.3}", d.as_secs_f64() / sign.as_secs_f64()))
        };
        println!(
            "{{\"frost_sign_us\":{},\"soft_seal_unseal_us\":{},\"soft_ratio\":{},\"soft_unseal_us\":{},\
             \"pkcs11_seal_unseal_us\":{},\"pkcs11_ratio\":{},\"pkcs11_unseal_us\":{},\"passphrase_derive_us\":{},\
             \"key_package_bytes\":{}}}",
            us(Some(sign)),
            us(Some(soft_time)),
            ratio(Some(soft_time)),
            us(Some(soft_unseal)),
            us(pkcs11_time),
            ratio(pkcs11_time),
            us(pkcs11_unseal),
            us(Some(derive)),
            key_package.len()
        );
    }
}
