//! What the benches share: a median timer, a time format and a 3-of-5 FROST
//! signing session. (Each bench uses a part of it.)
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use frost::keys::{IdentifierList, KeyPackage, PublicKeyPackage};
use frost::round1::SigningNonces;
use frost::{Identifier, SigningPackage};
use frost_ed25519 as frost;

/// The median of `iterations` timed calls of `op`, after a tenth as many warm-up calls.
pub fn median(iterations: usize, mut op: impl FnMut()) -> Duration {
    for _ in 0..iterations / 10 {
        op();
    }
    let mut times: Vec<Duration> = (0..iterations.max(1))
        .map(|_| {
            let started = Instant::now();
            op();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
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
