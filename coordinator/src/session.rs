//! One signing request: a loop of sessions, each taking preprocessed nonce
//! commitments from t signers (FROST round 1, done ahead of time) and asking
//! them for signature shares (round 2): one round trip per session.

use std::collections::{BTreeMap, BTreeSet};

use frost::keys::PublicKeyPackage;
use frost::round1::SigningCommitments;
use frost::round2::SignatureShare;
use frost::{Identifier, Signature, SigningPackage};
use frost_ed25519 as frost;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use synod_proto::NodeId;

use crate::Ticket;

/// Why a call to a signer did not give what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// No answer in time, or the connection failed.
    Unreachable(String),
    /// The signer answered and refused, saying why.
    Refused(String),
    /// The answer could not be parsed.
    Malformed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) => write!(f, "unreachable: {why}"),
            CallError::Refused(why) => write!(f, "refused: {why}"),
            CallError::Malformed(why) => write!(f, "malformed answer: {why}"),
        }
    }
}

/// How the coordinator reaches signers. Implementations bound every call with
/// a timeout, so a silent signer costs at most that long.
pub trait Signers: Sync {
    /// Round 1: nonce commitments `node` made for this job's key and has not
    /// used, with the ticket that redeems them in [`Signers::share`] (the
    /// signer's nonce slot and incarnation).
    /// Preprocessed commitments answer at once; the first may need a call.
    fn commitments<'a>(&'a self, node: NodeId) -> BoxFuture<'a, Result<(SigningCommitments, Ticket), CallError>>;

    /// Commitments that went into no signing package (more signers answered
    /// than a session needs): they may serve another one.
    fn unused(&self, node: NodeId, commitments: SigningCommitments, ticket: Ticket);

    /// Round 2: `node`'s signature share for this signing package, given
    /// parsed and serialised (serialising compresses every point, so it is
    /// done once per session, not once per signer).
    fn share<'a>(
        &'a self,
        node: NodeId,
        request_id: &'a str,
        ticket: &'a Ticket,
        package: &'a SigningPackage,
        serialized: &'a [u8],
    ) -> BoxFuture<'a, Result<SignatureShare, CallError>>;
}

/// What one request needs signed.
pub struct Job<'a> {
    pub request_id: &'a str,
    pub message: &'a [u8],
    /// The key's public package: group key and every participant's verifying share.
    pub public_keys: &'a PublicKeyPackage,
    pub threshold: u16,
    /// Participants in preference order. FROST identifier = node id.
    pub participants: &'a [NodeId],
    /// Signers to leave out from the start (recent culprits).
    pub excluded: BTreeSet<NodeId>,
}

/// A finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub signature: [u8; 64],
    /// The signers whose shares made the signature, ascending.
    pub signers: Vec<NodeId>,
    /// Signers caught sending invalid shares.
    pub culprits: Vec<NodeId>,
    pub sessions: u32,
}

/// Why a request could not be signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// A sentence an operator can act on.
    pub reason: String,
    pub culprits: Vec<NodeId>,
    pub sessions: u32,
}

/// The most sessions a request can need: each failed session excludes at least
/// one of the `participants`, and a session needs `threshold` of them.
pub fn sessions_max(participants: usize, threshold: u16) -> u32 {
    (participants.saturating_sub(usize::from(threshold)) + 1) as u32
}

/// The FROST identifier of a participant node.
fn identifier(node: NodeId) -> Option<Identifier> {
    u16::try_from(node).ok().and_then(|n| Identifier::try_from(n).ok())
}

/// Runs sessions until one yields a valid signature or too few signers remain.
pub async fn run(job: Job<'_>, signers: &impl Signers) -> Result<Signed, Failure> {
    let t = usize::from(job.threshold);
    let ids: BTreeMap<NodeId, Identifier> =
        job.participants.iter().filter_map(|n| identifier(*n).map(|id| (*n, id))).collect();
    let mut excluded = job.excluded.clone();
    let mut culprits: BTreeSet<NodeId> = BTreeSet::new();
    let mut problems: BTreeMap<NodeId, String> = BTreeMap::new();
    let limit = sessions_max(job.participants.len(), job.threshold);
    let fail = |reason: String, culprits: &BTreeSet<NodeId>, sessions: u32| Failure {
        reason,
        culprits: culprits.iter().copied().collect(),
        sessions,
    };
    for session in 1..=limit {
        let candidates: Vec<NodeId> =
            job.participants.iter().copied().filter(|n| !excluded.contains(n) && ids.contains_key(n)).collect();
        if candidates.len() < t {
            return Err(fail(too_few(t, &candidates, &problems, &excluded), &culprits, session - 1));
        }
        tracing::debug!(request_id = job.request_id, session, "signing session");

        // Round 1: ask every candidate, keep the first t to answer, and give
        // back the commitments of any that answered too late to be chosen.
        let request_id = job.request_id;
        let mut asks: FuturesUnordered<_> =
            candidates.iter().map(|&node| async move { (node, signers.commitments(node).await) }).collect();
        let mut answered: BTreeMap<NodeId, (SigningCommitments, Ticket)> = BTreeMap::new();
        while let Some((node, result)) = asks.next().await {
            match result {
                Ok(answer) => {
                    answered.insert(node, answer);
                    if answered.len() == t {
                        break;
                    }
                }
                Err(e) => {
                    tracing::info!(node, error = %e, "signer gave no commitments");
                    problems.insert(node, e.to_string());
                }
            }
        }
        while let Some(Some((node, result))) = asks.next().now_or_never() {
            if let Ok((commitments, ticket)) = result {
                signers.unused(node, commitments, ticket);
            }
        }
        drop(asks);
        if answered.len() < t {
            let silent: Vec<NodeId> = candidates.iter().copied().filter(|n| !answered.contains_key(n)).collect();
            return Err(fail(
                format!(
                    "only {} of the {t} signers needed answered round 1; no answer from nodes {silent:?} ({})",
                    answered.len(),
                    describe(&problems, &silent)
                ),
                &culprits,
                session,
            ));
        }
        let commitments: BTreeMap<Identifier, SigningCommitments> =
            answered.iter().map(|(node, (c, _))| (ids[node], *c)).collect();
        let package = SigningPackage::new(commitments, job.message);
        let serialized = match package.serialize() {
            Ok(bytes) => bytes,
            Err(e) => return Err(fail(format!("the signing package does not serialise: {e}"), &culprits, session)),
        };

        // Round 2: every chosen signer must answer.
        let shares: Vec<(NodeId, Result<SignatureShare, CallError>)> = answered
            .iter()
            .map(|(&node, (_, ticket))| {
                let (package, serialized) = (&package, serialized.as_slice());
                async move { (node, signers.share(node, request_id, ticket, package, serialized).await) }
            })
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        let mut collected = BTreeMap::new();
        let mut failed_round2 = Vec::new();
        for (node, result) in shares {
            match result {
                Ok(share) => {
                    collected.insert(ids[&node], share);
                }
                Err(e) => {
                    tracing::warn!(node, error = %e, "signer gave no share; retrying without it");
                    problems.insert(node, e.to_string());
                    failed_round2.push(node);
                }
            }
        }
        if !failed_round2.is_empty() {
            excluded.extend(failed_round2);
            continue;
        }
        match frost::aggregate_custom(&package, &collected, job.public_keys, frost::CheaterDetection::AllCheaters) {
            Ok(signature) => return Ok(finish(signature, &answered, &culprits, session)),
            Err(e) => {
                let named: Vec<NodeId> =
                    e.culprits().iter().filter_map(|id| ids.iter().find(|(_, v)| *v == id).map(|(n, _)| *n)).collect();
                if named.is_empty() {
                    return Err(fail(format!("aggregation failed without a culprit: {e}"), &culprits, session));
                }
                tracing::warn!(culprits = ?named, "invalid signature shares; retrying without their senders");
                for node in named {
                    problems.insert(node, "sent an invalid signature share".into());
                    culprits.insert(node);
                    excluded.insert(node);
                }
            }
        }
    }
    Err(fail(format!("no valid signature after {limit} sessions ({})", describe_all(&problems)), &culprits, limit))
}

fn finish(
    signature: Signature,
    answered: &BTreeMap<NodeId, (SigningCommitments, Ticket)>,
    culprits: &BTreeSet<NodeId>,
    sessions: u32,
) -> Signed {
    let bytes = signature.serialize().expect("an aggregated signature serialises");
    let mut out = [0u8; 64];
    out.copy_from_slice(&bytes);
    Signed {
        signature: out,
        signers: answered.keys().copied().collect(),
        culprits: culprits.iter().copied().collect(),
        sessions,
    }
}

fn too_few(
    t: usize,
    candidates: &[NodeId],
    problems: &BTreeMap<NodeId, String>,
    excluded: &BTreeSet<NodeId>,
) -> String {
    let left_out: Vec<NodeId> = excluded.iter().copied().collect();
    format!(
        "only {} usable signers remain and {t} are needed; left out: nodes {left_out:?} ({})",
        candidates.len(),
        describe(problems, &left_out)
    )
}

fn describe(problems: &BTreeMap<NodeId, String>, nodes: &[NodeId]) -> String {
    let parts: Vec<String> = nodes
        .iter()
        .map(|n| format!("node {n}: {}", problems.get(n).map_or("recently caught cheating", String::as_str)))
        .collect();
    parts.join("; ")
}

fn describe_all(problems: &BTreeMap<NodeId, String>) -> String {
    let nodes: Vec<NodeId> = problems.keys().copied().collect();
    describe(problems, &nodes)
}

#[cfg(test)]
mod tests;
