//! The session loop against in-process signers built from a dealer split.
//! These fakes test the coordinator alone; real signers are tested in node and tests/.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use frost::keys::{IdentifierList, KeyPackage};
use frost::round1::{SigningCommitments, SigningNonces};
use frost::round2::SignatureShare;
use frost_ed25519 as frost;
use futures::future::BoxFuture;
use futures::FutureExt;
use rand_core::OsRng;

use super::*;

/// How a fake signer misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    Silent,
    CorruptShare,
}

struct FakeSigners {
    keys: BTreeMap<NodeId, KeyPackage>,
    behaviour: BTreeMap<NodeId, Behaviour>,
    /// Nonces by (node, session); taken on use, so a second use panics the test.
    nonces: Mutex<BTreeMap<(NodeId, String), SigningNonces>>,
    sessions_seen: Mutex<BTreeSet<String>>,
}

impl FakeSigners {
    fn new(n: u16, t: u16, behaviour: &[(NodeId, Behaviour)]) -> (Self, frost::keys::PublicKeyPackage) {
        let ids: Vec<frost::Identifier> = (1..=n).map(|i| frost::Identifier::try_from(i).unwrap()).collect();
        let (shares, public) = frost::keys::generate_with_dealer(n, t, IdentifierList::Custom(&ids), OsRng).unwrap();
        let keys = shares
            .into_iter()
            .enumerate()
            .map(|(i, (_, share))| ((i + 1) as NodeId, KeyPackage::try_from(share).unwrap()))
            .collect();
        let fakes = FakeSigners {
            keys,
            behaviour: behaviour.iter().copied().collect(),
            nonces: Mutex::default(),
            sessions_seen: Mutex::default(),
        };
        (fakes, public)
    }

    fn behaviour(&self, node: NodeId) -> Behaviour {
        self.behaviour.get(&node).copied().unwrap_or(Behaviour::Honest)
    }
}

impl Signers for FakeSigners {
    fn commit<'a>(
        &'a self,
        node: NodeId,
        _request_id: &'a str,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<(SigningCommitments, String), CallError>> {
        async move {
            if self.behaviour(node) == Behaviour::Silent {
                return Err(CallError::Unreachable("timed out".into()));
            }
            self.sessions_seen.lock().unwrap().insert(session_id.to_string());
            let (nonces, commitments) = frost::round1::commit(self.keys[&node].signing_share(), &mut OsRng);
            let fresh = self.nonces.lock().unwrap().insert((node, session_id.to_string()), nonces).is_none();
            assert!(fresh, "a session id was reused for node {node}");
            Ok((commitments, "boot-1".to_string()))
        }
        .boxed()
    }

    fn share<'a>(
        &'a self,
        node: NodeId,
        _request_id: &'a str,
        session_id: &'a str,
        _incarnation: &'a str,
        package: &'a SigningPackage,
    ) -> BoxFuture<'a, Result<SignatureShare, CallError>> {
        async move {
            let nonces =
                self.nonces.lock().unwrap().remove(&(node, session_id.to_string())).expect("nonce used at most once");
            let share = frost::round2::sign(package, &nonces, &self.keys[&node]).unwrap();
            if self.behaviour(node) == Behaviour::CorruptShare {
                // The scalar is the last 32 bytes (little-endian); changing only its low half keeps
                // it canonical, and two corrupt shares do not cancel out.
                let mut bytes = share.serialize();
                let low = bytes.len() - 32;
                bytes[low..low + 16].iter_mut().for_each(|b| *b ^= 0x5a);
                return Ok(SignatureShare::deserialize(&bytes).expect("still a canonical scalar"));
            }
            Ok(share)
        }
        .boxed()
    }
}

fn job<'a>(public: &'a frost::keys::PublicKeyPackage, participants: &'a [NodeId], t: u16) -> Job<'a> {
    Job {
        request_id: "r1",
        message: b"pay 10 to alice",
        public_keys: public,
        threshold: t,
        participants,
        excluded: BTreeSet::new(),
    }
}

fn session_ids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("s{n}")
    }
}

fn verifies(public: &frost::keys::PublicKeyPackage, signed: &Signed) -> bool {
    let sig = frost::Signature::deserialize(&signed.signature).unwrap();
    public.verifying_key().verify(b"pay 10 to alice", &sig).is_ok()
}

#[tokio::test]
async fn coordinator_signs_with_threshold_signers() {
    // A 3-of-5 request completes in one session with exactly three signers.
    let (fakes, public) = FakeSigners::new(5, 3, &[]);
    let signed = run(job(&public, &[1, 2, 3, 4, 5], 3), &fakes, session_ids()).await.unwrap();
    assert_eq!(signed.signers.len(), 3);
    assert_eq!(signed.sessions, 1);
    assert!(verifies(&public, &signed));
}

#[tokio::test]
async fn coordinator_survives_n_minus_t_silent_signers() {
    // With n − t signers silent, the others still sign in the first session.
    let silent = [(1, Behaviour::Silent), (2, Behaviour::Silent)];
    let (fakes, public) = FakeSigners::new(5, 3, &silent);
    let signed = run(job(&public, &[1, 2, 3, 4, 5], 3), &fakes, session_ids()).await.unwrap();
    assert_eq!(signed.signers, vec![3, 4, 5]);
    assert!(verifies(&public, &signed));
}

#[tokio::test]
async fn coordinator_names_a_cheater_and_retries_without_it() {
    // A signer that sends an invalid share is named a culprit; a new session with
    // fresh commitments and without it succeeds.
    let (fakes, public) = FakeSigners::new(3, 2, &[(1, Behaviour::CorruptShare)]);
    let signed = run(job(&public, &[1, 2, 3], 2), &fakes, session_ids()).await.unwrap();
    assert_eq!(signed.culprits, vec![1]);
    assert_eq!(signed.signers, vec![2, 3]);
    assert_eq!(signed.sessions, 2);
    assert!(verifies(&public, &signed));
    assert_eq!(fakes.sessions_seen.lock().unwrap().len(), 2, "each session has its own id");
}

#[tokio::test]
async fn coordinator_fails_cleanly_below_threshold() {
    // With fewer than t signers answering, the request fails with a reason naming them.
    let silent = [(2, Behaviour::Silent), (3, Behaviour::Silent)];
    let (fakes, public) = FakeSigners::new(3, 2, &silent);
    let failure = run(job(&public, &[1, 2, 3], 2), &fakes, session_ids()).await.unwrap_err();
    assert!(failure.reason.contains("only 1 of the 2 signers needed"), "{}", failure.reason);
    assert!(failure.reason.contains("node 2"), "{}", failure.reason);
}

#[tokio::test]
async fn coordinator_session_count_is_bounded() {
    // Cheaters everywhere: the loop stops after at most n − t + 1 sessions.
    let cheats = [(1, Behaviour::CorruptShare), (2, Behaviour::CorruptShare), (3, Behaviour::CorruptShare)];
    let (fakes, public) = FakeSigners::new(4, 2, &cheats);
    let failure = run(job(&public, &[1, 2, 3, 4], 2), &fakes, session_ids()).await.unwrap_err();
    assert!(failure.sessions <= sessions_max(4, 2));
    assert!(!failure.culprits.is_empty());
}
