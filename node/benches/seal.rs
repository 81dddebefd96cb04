//! What the KEK costs on the signing path: one FROST round-2 sign (3-of-5, one
//! signer) next to sealing and unsealing a FROST key package on each KEK
//! backend, as criterion benchmarks and as ratios to the sign measured in the
//! same run.
//!
//! `cargo bench -p synod-node --bench seal` measures: criterion's report, then
//! the ratio table and one JSON line. Under `cargo test --benches` each
//! operation runs once, to prove it still works. The pkcs11 rows need SoftHSM2
//! (`apt-get install softhsm2`); without it they say they were skipped.

use std::path::Path;
use std::time::Duration;

use common::{criterion, print_ratios, session, Pieces, Row};
use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
use frost_ed25519 as frost;
use synod_node::kek::{init_softhsm_token, Kek, Pkcs11Config, Pkcs11Kek, SoftKek, SOFTHSM_MODULE};
use synod_node::sealed::{Purpose, SealContext};
use zeroize::Zeroizing;

mod common;

/// The KEK under test and what it seals.
struct Sealing<'a> {
    kek: &'a dyn Kek,
    aad: &'a [u8],
    secret: &'a [u8],
}

impl Sealing<'_> {
    fn unseal_only(
        &self,
        pieces: &Pieces,
        group: &mut BenchmarkGroup<'_, WallTime>,
        key: &'static str,
    ) -> Option<Duration> {
        let blob = self.kek.seal(self.aad, self.secret).expect("seal");
        pieces.measure(group, key, || {
            std::hint::black_box(self.kek.unseal(self.aad, &blob).expect("unseal"));
        })
    }

    fn seal_unseal(
        &self,
        pieces: &Pieces,
        group: &mut BenchmarkGroup<'_, WallTime>,
        key: &'static str,
    ) -> Option<Duration> {
        pieces.measure(group, key, || {
            let blob = self.kek.seal(self.aad, self.secret).expect("seal");
            let opened = self.kek.unseal(self.aad, &blob).expect("unseal");
            assert_eq!(opened.len(), self.secret.len());
        })
    }
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
    let mut c = criterion();
    let pieces = Pieces::default();
    let mut benches = c.benchmark_group("seal");

    let s = session();
    let (id, package) = s.packages.iter().next().expect("a signer");
    let signer_nonces = &s.nonces[id];
    // Measurement only: real signers use each nonce once.
    let sign = pieces.measure(&mut benches, "frost_sign", || {
        std::hint::black_box(frost::round2::sign(&s.package, signer_nonces, package).expect("sign"));
    });
    let key_package = package.serialize().expect("serialize the key package");
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
    let soft = Sealing { kek: &soft, aad: &aad, secret: &key_package };
    let soft_time = soft.seal_unseal(&pieces, &mut benches, "soft_seal_unseal");
    let soft_unseal = soft.unseal_only(&pieces, &mut benches, "soft_unseal");
    let (pkcs11_time, pkcs11_unseal, pkcs11_note) = match softhsm_kek(&dir.path().join("softhsm")) {
        Ok(kek) => {
            let hsm = Sealing { kek: &kek, aad: &aad, secret: &key_package };
            (
                hsm.seal_unseal(&pieces, &mut benches, "pkcs11_seal_unseal"),
                hsm.unseal_only(&pieces, &mut benches, "pkcs11_unseal"),
                "SoftHSM2, in-token AES-GCM".to_string(),
            )
        }
        Err(why) => (None, None, why),
    };
    // Argon2id takes a large fraction of a second: the fewest samples criterion allows.
    benches.sample_size(10);
    let derive = pieces.measure(&mut benches, "passphrase_derive", || {
        std::hint::black_box(SoftKek::from_passphrase("a bench passphrase", &[7; 16]).expect("derive"));
    });
    benches.finish();
    c.final_summary();

    print_ratios(&[
        Row {
            name: "FROST round-2 sign (3-of-5)",
            key: "frost_sign",
            median: sign,
            note: "frost-ed25519 3.0, one signer".into(),
        },
        Row {
            name: "soft seal+unseal",
            key: "soft_seal_unseal",
            median: soft_time,
            note: format!("{}-byte key package, AES-256-GCM in process", key_package.len()),
        },
        Row {
            name: "soft unseal",
            key: "soft_unseal",
            median: soft_unseal,
            note: "what a sign would add per use".into(),
        },
        Row { name: "pkcs11 seal+unseal", key: "pkcs11_seal_unseal", median: pkcs11_time, note: pkcs11_note.clone() },
        Row { name: "pkcs11 unseal", key: "pkcs11_unseal", median: pkcs11_unseal, note: pkcs11_note },
        Row {
            name: "passphrase KEK derivation",
            key: "passphrase_derive",
            median: derive,
            note: "Argon2id, once per node start".into(),
        },
    ]);
}
