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
    /// Nonces by (node, ticket); taken on use, so a second use panics the test.
    nonces: Mutex<BTreeMap<(NodeId, Ticket), SigningNonces>>,
    /// Commitments handed back as unused, per node, served again first.
    returned: Mutex<BTreeMap<NodeId, Vec<(SigningCommitments, Ticket)>>>,
    tickets: Mutex<u64>,
    /// Tickets redeemed in round 2.
    redeemed: Mutex<BTreeSet<Ticket>>,
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
            returned: Mutex::default(),
            tickets: Mutex::default(),
            redeemed: Mutex::default(),
        };
        (fakes, public)
    }

    fn behaviour(&self, node: NodeId) -> Behaviour {
        self.behaviour.get(&node).copied().unwrap_or(Behaviour::Honest)
    }
}

impl Signers for FakeSigners {
    fn commitments<'a>(&'a self, node: NodeId) -> BoxFuture<'a, Result<(SigningCommitments, Ticket), CallError>> {
        async move {
            if self.behaviour(node) == Behaviour::Silent {
                return Err(CallError::Unreachable("timed out".into()));
            }
            if let Some(back) = self.returned.lock().unwrap().get_mut(&node).and_then(Vec::pop) {
                return Ok(back);
            }
            let ticket = {
                let mut n = self.tickets.lock().unwrap();
                *n += 1;
                Ticket { incarnation: "fake".into(), slot: *n }
            };
            let (nonces, commitments) = frost::round1::commit(self.keys[&node].signing_share(), &mut OsRng);
            self.nonces.lock().unwrap().insert((node, ticket.clone()), nonces);
            Ok((commitments, ticket))
        }
        .boxed()
    }

    fn unused(&self, node: NodeId, commitments: SigningCommitments, ticket: Ticket) {
        self.returned.lock().unwrap().entry(node).or_default().push((commitments, ticket));
    }

    fn share<'a>(
        &'a self,
        node: NodeId,
        _request_id: &'a str,
        ticket: &'a Ticket,
        package: &'a SigningPackage,
        serialized: &'a [u8],
    ) -> BoxFuture<'a, Result<SignatureShare, CallError>> {
        async move {
            let nonces = self.nonces.lock().unwrap().remove(&(node, ticket.clone())).expect("nonce used at most once");
            assert!(self.redeemed.lock().unwrap().insert(ticket.clone()));
            assert_eq!(serialized, package.serialize().unwrap(), "the package is sent as serialised");
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

fn verifies(public: &frost::keys::PublicKeyPackage, signed: &Signed) -> bool {
    let sig = frost::Signature::deserialize(&signed.signature).unwrap();
    public.verifying_key().verify(b"pay 10 to alice", &sig).is_ok()
}

#[tokio::test]
async fn coordinator_signs_with_threshold_signers() {
    // A 3-of-5 request completes in one session with exactly three signers.
    let (fakes, public) = FakeSigners::new(5, 3, &[]);
    let signed = run(job(&public, &[1, 2, 3, 4, 5], 3), &fakes).await.unwrap();
    assert_eq!(signed.signers.len(), 3);
    assert_eq!(signed.sessions, 1);
    assert!(verifies(&public, &signed));
}

#[tokio::test]
async fn coordinator_survives_n_minus_t_silent_signers() {
    // With n − t signers silent, the others still sign in the first session.
    let silent = [(1, Behaviour::Silent), (2, Behaviour::Silent)];
    let (fakes, public) = FakeSigners::new(5, 3, &silent);
    let signed = run(job(&public, &[1, 2, 3, 4, 5], 3), &fakes).await.unwrap();
    assert_eq!(signed.signers, vec![3, 4, 5]);
    assert!(verifies(&public, &signed));
}

#[tokio::test]
async fn coordinator_names_a_cheater_and_retries_without_it() {
    // A signer that sends an invalid share is named a culprit; a new session with
    // fresh commitments and without it succeeds.
    let (fakes, public) = FakeSigners::new(3, 2, &[(1, Behaviour::CorruptShare)]);
    let signed = run(job(&public, &[1, 2, 3], 2), &fakes).await.unwrap();
    assert_eq!(signed.culprits, vec![1]);
    assert_eq!(signed.signers, vec![2, 3]);
    assert_eq!(signed.sessions, 2);
    assert!(verifies(&public, &signed));
    assert_eq!(fakes.redeemed.lock().unwrap().len(), 4, "each session redeems fresh commitments");
}

#[tokio::test]
async fn coordinator_fails_cleanly_below_threshold() {
    // With fewer than t signers answering, the request fails with a reason naming them.
    let silent = [(2, Behaviour::Silent), (3, Behaviour::Silent)];
    let (fakes, public) = FakeSigners::new(3, 2, &silent);
    let failure = run(job(&public, &[1, 2, 3], 2), &fakes).await.unwrap_err();
    assert!(failure.reason.contains("only 1 of the 2 signers needed"), "{}", failure.reason);
    assert!(failure.reason.contains("node 2"), "{}", failure.reason);
}

#[tokio::test]
async fn coordinator_session_count_is_bounded() {
    // Cheaters everywhere: the loop stops after at most n − t + 1 sessions.
    let cheats = [(1, Behaviour::CorruptShare), (2, Behaviour::CorruptShare), (3, Behaviour::CorruptShare)];
    let (fakes, public) = FakeSigners::new(4, 2, &cheats);
    let failure = run(job(&public, &[1, 2, 3, 4], 2), &fakes).await.unwrap_err();
    assert!(failure.sessions <= sessions_max(4, 2));
    assert!(!failure.culprits.is_empty());
}

#[tokio::test]
async fn coordinator_gives_back_commitments_it_did_not_use() {
    // All five signers answer at once; only three go into the package, and the
    // other two commitments are handed back for another request, never lost or reused.
    let (fakes, public) = FakeSigners::new(5, 3, &[]);
    let first = run(job(&public, &[1, 2, 3, 4, 5], 3), &fakes).await.unwrap();
    let returned: usize = fakes.returned.lock().unwrap().values().map(Vec::len).sum();
    assert_eq!(returned, 2, "the two commitments left out are given back");
    let second = run(job(&public, &[1, 2, 3, 4, 5], 3), &fakes).await.unwrap();
    assert!(verifies(&public, &first) && verifies(&public, &second));
    assert_eq!(fakes.redeemed.lock().unwrap().len(), 6, "six shares, six distinct slots");
}
