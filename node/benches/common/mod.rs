//! What the benches share: criterion runs that also keep their samples, a
//! table of ratios to a baseline measured in the same run, and a 3-of-5 FROST
//! signing session. (Each bench uses a part of it.)
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};

use frost::keys::{IdentifierList, KeyPackage, PublicKeyPackage};
use frost::round1::SigningNonces;
use frost::{Identifier, SigningPackage};
use frost_ed25519 as frost;

/// Criterion with the project's defaults (short warm-up, 2 s per piece) and
/// the command line's filters and flags.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

/// Runs each piece as a criterion benchmark and keeps the per-call time of
/// every sample criterion took, so the ratios come from the same samples as
/// criterion's report. Under `cargo test --benches` each piece runs once.
#[derive(Default)]
pub struct Pieces {
    samples: RefCell<BTreeMap<&'static str, Vec<Duration>>>,
}

impl Pieces {
    /// Benchmarks `op` as `key`; returns the median time per call, or None
    /// when a criterion filter left the piece out.
    pub fn measure(
        &self,
        group: &mut BenchmarkGroup<'_, WallTime>,
        key: &'static str,
        mut op: impl FnMut(),
    ) -> Option<Duration> {
        group.bench_function(key, |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                for _ in 0..iterations {
                    op();
                }
                let elapsed = started.elapsed();
                let per_call = elapsed / u32::try_from(iterations.max(1)).unwrap_or(u32::MAX);
                self.samples.borrow_mut().entry(key).or_default().push(per_call);
                elapsed
            })
        });
        let mut times = self.samples.borrow().get(key).cloned()?;
        times.sort();
        Some(times[times.len() / 2])
    }
}

/// One line of a ratio table.
pub struct Row {
    pub name: &'static str,
    /// The JSON field prefix.
    pub key: &'static str,
    /// Median per call; None when filtered out or skipped.
    pub median: Option<Duration>,
    pub note: String,
}

/// Prints `rows` as a table of medians and ratios to the first row (the
/// baseline), then the same as one JSON line (`<key>_us`, `<key>_ratio`; null
/// for a row that did not run).
pub fn print_ratios(rows: &[Row]) {
    let Some(base) = rows.first().and_then(|r| r.median) else {
        println!("(the baseline, {}, did not run: no ratios)", rows.first().map_or("-", |r| r.key));
        return;
    };
    let ratio = |d: Duration| d.as_secs_f64() / base.as_secs_f64();
    println!();
    println!("{:<34} {:>10} {:>12}  note", "piece", "median", format!("x {}", rows[0].key));
    for row in rows {
        match row.median {
            Some(t) => println!("{:<34} {:>10} {:>12.2}  {}", row.name, format_time(t), ratio(t), row.note),
            None => println!("{:<34} {:>10} {:>12}  {}", row.name, "-", "-", row.note),
        }
    }
    let fields: Vec<String> = rows
        .iter()
        .map(|r| match r.median {
            Some(t) => format!("\"{}_us\":{:.2},\"{}_ratio\":{:.3}", r.key, t.as_secs_f64() * 1e6, r.key, ratio(t)),
            None => format!("\"{}_us\":null,\"{}_ratio\":null", r.key, r.key),
        })
        .collect();
    println!("{{{}}}", fields.join(","));
}

/// Microseconds below 10 ms, milliseconds above.
pub fn format_time(t: Duration) -> String {
    if t < Duration::from_millis(10) {
        format!("{:.1} µs", t.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", t.as_secs_f64() * 1e3)
    }
}

pub const MESSAGE: &[u8] = b"a 32-byte message to be signed..";

/// A 3-of-5 key, three signers' nonces and the signing package they make.
pub struct Session {
    pub packages: BTreeMap<Identifier, KeyPackage>,
    pub public: PublicKeyPackage,
    pub nonces: BTreeMap<Identifier, SigningNonces>,
    pub package: SigningPackage,
}

pub fn session() -> Session {
    let mut rng = frost::rand_core::OsRng;
    let (shares, public) = frost::keys::generate_with_dealer(5, 3, IdentifierList::Default, rng).expect("deal keys");
    let packages: BTreeMap<Identifier, KeyPackage> =
        shares.into_iter().map(|(id, share)| (id, KeyPackage::try_from(share).expect("a valid share"))).collect();
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for (id, package) in packages.iter().take(3) {
        let (n, c) = frost::round1::commit(package.signing_share(), &mut rng);
        nonces.insert(*id, n);
        commitments.insert(*id, c);
    }
    let package = SigningPackage::new(commitments, MESSAGE);
    Session { packages, public, nonces, package }
}
