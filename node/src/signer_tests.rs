//! The signer alone, on a committed state built by a real in-process DKG: what
//! a preprocessed slot may sign, and what it refuses. The network and the
//! coordinator are tested with real processes in `tests/tests/signing.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use frost_ed25519 as frost;
use rand_core::OsRng;
use synod_proto::rpc::{NonceBatch, ShareAsk, PREPROCESS_COUNT_MAX};
use synod_proto::Command;
use zeroize::Zeroizing;

use super::*;
use crate::kek::SoftKek;
use crate::state::key_tests::{dkg, World};
use crate::store::MemoryStore;

const BOOT: &str = "boot-1";
const MESSAGE: &[u8] = b"pay 1";

/// A clock the test sets (ms since the epoch).
struct TestClock(std::sync::atomic::AtomicU64);

impl crate::seams::Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The allowance the fixture's signer gives clocks.
const SKEW_MS_MAX: u64 = 300_000;

struct Fixture {
    signer: Signer,
    /// The signer's own clock, at the state's time to start with.
    clock: Arc<TestClock>,
    /// When request "r1" expires (the log's time).
    expires_at_ms: u64,
    key_id: String,
    packages: BTreeMap<u64, frost::keys::KeyPackage>,
}

/// Node 1's signer over a 2-of-3 key "k" and a pending request "r1" for [`MESSAGE`].
fn fixture() -> Fixture {
    let mut world = World::new();
    let packages = dkg(&mut world, "k");
    let request = Command::SignRequest {
        format: None,
        trusted_comment: None,
        request_id: "r1".into(),
        key: "k".into(),
        message: hex::encode(MESSAGE),
        purpose: String::new(),
        environment: String::new(),
        attributes: Default::default(),
        version: None,
    };
    assert!(world.by_admin(request).is_applied());
    let key_id = world.key_id("k");
    let store: Arc<dyn crate::store::Store> = Arc::new(MemoryStore::new());
    let kek = Arc::new(SoftKek::from_key_bytes(Zeroizing::new([9; 32])));
    let sealed = Arc::new(SealedStore::new(store.clone(), kek));
    let cluster_id = world.state.cluster_id.clone().unwrap_or_default();
    let ctx = key_package_context(cluster_id, 1, &world.state.keys[&key_id]);
    sealed.put(&ctx, &packages[&1].serialize().unwrap()).unwrap();
    let shared = SharedState::holding(world.state.clone(), world.index);
    let clock = Arc::new(TestClock(world.state.time_ms.into()));
    let local = LocalClock { clock: clock.clone(), skew_ms_max: SKEW_MS_MAX };
    let signer = Signer::new(1, BOOT.into(), shared, sealed, store, crate::seams::os_rng(), local);
    let expires_at_ms = world.state.requests["r1"].expires_at_ms;
    Fixture { signer, clock, expires_at_ms, key_id, packages }
}

fn commitments_of(batch: &NonceBatch, i: usize) -> SigningCommitments {
    SigningCommitments::deserialize(&hex::decode(&batch.commitments[i]).unwrap()).unwrap()
}

/// A signing package with slot `i` of node 1's batch and fresh commitments of node 2.
fn package(f: &Fixture, batch: &NonceBatch, i: usize, message: &[u8]) -> String {
    let (_, theirs) = frost::round1::commit(f.packages[&2].signing_share(), &mut OsRng);
    let mut commitments = BTreeMap::new();
    commitments.insert(frost_identifier(1).unwrap(), commitments_of(batch, i));
    commitments.insert(frost_identifier(2).unwrap(), theirs);
    hex::encode(SigningPackage::new(commitments, message).serialize().unwrap())
}

fn ask(batch: &NonceBatch, i: usize, signing_package: &str) -> ShareAsk {
    ShareAsk {
        request_id: "r1".into(),
        slot: batch.first_slot + i as u64,
        incarnation: batch.incarnation.clone(),
        signing_package: signing_package.into(),
        min_index: 0,
        generation: 0,
    }
}

async fn share(f: &Fixture, ask: ShareAsk, owner: NodeId) -> Result<String, String> {
    f.signer.share_batch(&[ask], owner, false).await.pop().unwrap()
}

fn refused(result: Result<String, String>, needle: &str) {
    match result {
        Err(why) => assert!(why.contains(needle), "refused for {why:?}, expected {needle:?}"),
        Ok(_) => panic!("expected a refusal containing {needle:?}, got a share"),
    }
}

#[tokio::test]
async fn signer_refuses_a_request_expired_by_its_own_clock() {
    // A leader holding the log's time back keeps an expired request pending in the state; the
    // signer still refuses it once its own clock is past the expiry by more than the skew
    // allowance, and signs it within the allowance.
    let f = fixture();
    let batch = f.signer.preprocess(&f.key_id, 2, 1).await.unwrap();
    f.clock.0.store(f.expires_at_ms + SKEW_MS_MAX + 1, std::sync::atomic::Ordering::Relaxed);
    refused(share(&f, ask(&batch, 0, &package(&f, &batch, 0, MESSAGE)), 1).await, "expired");
    assert!(f.signer.released().is_empty());
    f.clock.0.store(f.expires_at_ms + SKEW_MS_MAX, std::sync::atomic::Ordering::Relaxed);
    assert!(share(&f, ask(&batch, 1, &package(&f, &batch, 1, MESSAGE)), 1).await.is_ok());
}

#[tokio::test]
async fn signer_slot_signs_exactly_one_package() {
    // A slot's nonces sign one package; the byte-identical retry gets the same share back, and
    // any other package for that slot is refused, so no nonce ever signs two packages.
    let f = fixture();
    let batch = f.signer.preprocess(&f.key_id, 2, 1).await.unwrap();
    assert_eq!(batch.incarnation, BOOT);
    assert_eq!(batch.commitments.len(), 2);
    let first = package(&f, &batch, 0, MESSAGE);
    let share_once = share(&f, ask(&batch, 0, &first), 1).await.unwrap();
    assert_eq!(share(&f, ask(&batch, 0, &first), 1).await.unwrap(), share_once, "a retry is answered the same");
    let other = package(&f, &batch, 0, MESSAGE);
    refused(share(&f, ask(&batch, 0, &other), 1).await, "already signed another package");
    assert_eq!(f.signer.released().len(), 1, "one share released, not two");
    // The other slot is still fresh and signs the other package.
    let second = package(&f, &batch, 1, MESSAGE);
    assert!(share(&f, ask(&batch, 1, &second), 1).await.is_ok());
}

#[tokio::test]
async fn signer_wrong_asks_leave_the_slot_unused() {
    // A slot asked for by another coordinator, with another boot's incarnation, with a package
    // that lacks the slot's commitments or carries another message is refused, and the slot's
    // nonces stay unused for the right ask.
    let f = fixture();
    let batch = f.signer.preprocess(&f.key_id, 2, 1).await.unwrap();
    let good = package(&f, &batch, 0, MESSAGE);
    refused(share(&f, ask(&batch, 0, &good), 3).await, "another key or coordinator");
    let mut old_boot = ask(&batch, 0, &good);
    old_boot.incarnation = "boot-0".into();
    refused(share(&f, old_boot, 1).await, "restarted");
    let not_mine = package(&f, &batch, 1, MESSAGE);
    refused(share(&f, ask(&batch, 0, &not_mine), 1).await, "does not carry this node's commitments");
    let other_message = package(&f, &batch, 0, b"pay 1000");
    refused(share(&f, ask(&batch, 0, &other_message), 1).await, "not request r1's committed message");
    let mut unknown = ask(&batch, 0, &good);
    unknown.request_id = "r2".into();
    refused(share(&f, unknown, 1).await, "not in this node's committed log");
    assert!(f.signer.released().is_empty());
    assert!(share(&f, ask(&batch, 0, &good), 1).await.is_ok(), "the slot still signs the right package");
}

#[tokio::test]
async fn signer_preprocessing_is_bounded_and_checked() {
    // Counts outside 1..=PREPROCESS_COUNT_MAX and unknown keys are refused; one coordinator's
    // fresh slots stay under their cap, the oldest dropped first (a dropped nonce is never used).
    let f = fixture();
    refused(f.signer.preprocess(&f.key_id, 0, 1).await.map(|_| String::new()), "ask for 1 to");
    refused(f.signer.preprocess(&f.key_id, PREPROCESS_COUNT_MAX + 1, 1).await.map(|_| String::new()), "ask for 1 to");
    refused(f.signer.preprocess("nope", 1, 1).await.map(|_| String::new()), "not in this node's committed state");
    let first = f.signer.preprocess(&f.key_id, 1, 1).await.unwrap();
    let batches = FRESH_PER_COORDINATOR_MAX / PREPROCESS_COUNT_MAX as usize;
    for _ in 0..batches {
        f.signer.preprocess(&f.key_id, PREPROCESS_COUNT_MAX, 1).await.unwrap();
    }
    assert_eq!(f.signer.open_slots(), FRESH_PER_COORDINATOR_MAX);
    let dropped = package(&f, &first, 0, MESSAGE);
    refused(share(&f, ask(&first, 0, &dropped), 1).await, "no nonces in slot");
    // Another coordinator's slots are not taken away by this one's.
    f.signer.preprocess(&f.key_id, 4, 2).await.unwrap();
    assert_eq!(f.signer.open_slots(), FRESH_PER_COORDINATOR_MAX + 4);
}

#[tokio::test]
async fn signer_drops_fresh_slots_on_resume_and_keeps_used_ones() {
    // After a suspected resume (or clone) every unused slot is gone, so no image of this signer
    // can redeem one; a used slot keeps answering its one package with the same share.
    let f = fixture();
    let batch = f.signer.preprocess(&f.key_id, 3, 1).await.unwrap();
    let first = package(&f, &batch, 0, MESSAGE);
    let share_once = share(&f, ask(&batch, 0, &first), 1).await.unwrap();
    assert_eq!(f.signer.drop_fresh_slots(), 2, "the two unused slots go");
    assert_eq!(share(&f, ask(&batch, 0, &first), 1).await.unwrap(), share_once);
    let result = share(&f, ask(&batch, 1, &package(&f, &batch, 1, MESSAGE)), 1).await;
    assert!(result.is_err(), "a dropped slot signs nothing: {result:?}");
    assert_eq!(f.signer.released().len(), 1);
}
