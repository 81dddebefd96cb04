//! The vote gates: a node grants no vote, and does not stand for election,
//! on the strength of a disk that may have lost its latest vote or entries.
//!
//! Raft assumes a node never loses its vote or the entries it acknowledged. A
//! disk can break that in two ways, and each has its gate:
//!
//! - **Empty** ([`CatchUp`]): a wiped or replaced disk looks like a new node.
//!   Until it has applied the commit index of the first leader that contacts
//!   it, it neither votes nor stands (invariant 12).
//! - **Possibly rolled back** ([`BootCheck`]): a restored backup, a VM snapshot
//!   or a copied directory holds an older vote and log than the node last had,
//!   and nothing on the disk says so. So every start on a disk that holds Raft
//!   state is treated as one (an empty disk has the gate above): the
//!   node waits one maximum election timeout (any election it voted in before
//!   stopping has ended by then), asks the other voters for their vote and last
//!   log id, and once a majority of them answered it votes only in terms above
//!   the highest term they reported, only for logs at least as long as the
//!   longest they hold, and stands only when its own term and log reach the
//!   same floor (invariant 35, argued in ARCHITECTURE.md). The floor lifts once
//!   the node has applied an entry of a newer term: a leader elected above the
//!   floor has brought it up to date.

use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{LogId, Vote};
use synod_proto::rpc::{PeerRequest, PeerResponse};
use synod_proto::NodeId;

use super::Node;

/// Where a node that started on an empty disk stands.
///
/// The one vote it may grant is in the bootstrap election of a new cluster,
/// whose candidate holds only the initial membership (log index 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CatchUp {
    /// The node's disk held Raft state when it started.
    NotNeeded,
    /// Empty disk; no leader has told it the commit index yet.
    AwaitingLeader,
    /// Empty disk; caught up once it has applied this index.
    Until(u64),
    /// Caught up.
    Done,
}

/// Where a node stands in the boot check that every start runs (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BootCheck {
    /// Started; no vote and no candidacy until a majority of the other voters
    /// answered, asked one maximum election timeout after the start.
    Waiting,
    /// A majority answered: the highest term and the longest log they reported.
    Floor { term: u64, log: Option<LogId<NodeId>> },
    /// This node applied an entry of a term above the floor: Raft's own rules suffice.
    Lifted,
}

/// The fewest of `others` voters whose answers close the boot check: a majority
/// of them. Any majority of the whole cluster that elected a leader with this
/// node's lost vote, or stored an entry with this node's lost acknowledgement,
/// holds at least half of the others, and so meets every majority of them.
pub(super) fn answers_needed(others: usize) -> usize {
    if others == 0 {
        0
    } else {
        others / 2 + 1
    }
}

/// The floor that `answers` from `others` other voters give (`None` with too
/// few answers): the highest term, and the longest log that enough of them
/// hold. An entry committed with this node's acknowledgement sits on a
/// majority of the cluster, so on at least `n/2` of the others (n = others +
/// 1), of which at least `n/2 + answers - others` answered: the log of that
/// rank from the top is at least that entry. With a bare majority answering
/// that is the longest log; with everyone answering, one node's uncommitted
/// tail (a deposed leader's) no longer sets the floor.
pub(super) fn floor_of(others: usize, answers: &[(Vote<NodeId>, Option<LogId<NodeId>>)]) -> Option<BootCheck> {
    if answers.len() < answers_needed(others) {
        return None;
    }
    // A log entry's term counts as a vote in it: a node restored from a backup
    // holds entries but no vote, and a leader elected in their term would be
    // the term's second.
    let term = answers
        .iter()
        .map(|(vote, log)| vote.leader_id.term.max(log.map_or(0, |l| l.leader_id.term)))
        .max()
        .unwrap_or(0);
    let mut logs: Vec<Option<LogId<NodeId>>> = answers.iter().map(|(_, log)| *log).collect();
    logs.sort_unstable_by(|a, b| b.cmp(a));
    // n/2 with n = others + 1 nodes is ceil(others/2).
    let holders = (others.div_ceil(2) + answers.len()).saturating_sub(others).max(1);
    let log = logs.get(holders - 1).copied().flatten();
    Some(BootCheck::Floor { term, log })
}

/// Two floors, each a valid bound, merged: the lower log (a later round with
/// more answers can lower it). The term stays the first round's.
fn merge(old: BootCheck, new: BootCheck) -> BootCheck {
    match (old, new) {
        (BootCheck::Floor { term, log: a }, BootCheck::Floor { log: b, .. }) => {
            BootCheck::Floor { term, log: a.min(b) }
        }
        (BootCheck::Waiting, new) => new,
        (old, _) => old,
    }
}

/// How a vote request meets a floor; `None` when it clears it.
pub(super) fn below_floor(floor: BootCheck, request: &VoteRequest<NodeId>) -> Option<String> {
    match floor {
        BootCheck::Waiting => Some("the boot check has not heard from a majority of the other voters yet".into()),
        BootCheck::Floor { term, log } => {
            if request.vote.leader_id.term <= term {
                Some(format!(
                    "term {} is not above term {term}, the highest a majority reported after this node started",
                    request.vote.leader_id.term
                ))
            } else if request.last_log_id < log {
                Some(format!(
                    "the candidate's log ends at {} but a majority reported one ending at {}",
                    show(request.last_log_id),
                    show(log)
                ))
            } else {
                None
            }
        }
        BootCheck::Lifted => None,
    }
}

/// The first 200 characters of `text`, for a log line.
fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

fn show(log: Option<LogId<NodeId>>) -> String {
    log.map_or_else(|| "nothing".into(), |l| format!("index {} of term {}", l.index, l.leader_id.term))
}

impl Node {
    /// Records the commit index a leader sent to a node that started on an empty disk.
    pub(super) fn note_leader_commit(&self, commit_index: Option<u64>) {
        let mut catch_up = self.catch_up.lock().expect("catch-up lock");
        if *catch_up == CatchUp::AwaitingLeader {
            *catch_up = CatchUp::Until(commit_index.unwrap_or(0));
        }
    }

    /// Where this node stands after an empty disk and in the boot check, moving
    /// `Until` to `Done` once it has applied the target and a floor to `Lifted`
    /// once it has applied an entry of a newer term; with the Raft metrics it judged by.
    fn gates_now(&self) -> (CatchUp, BootCheck, openraft::RaftMetrics<NodeId, synod_proto::NodeAddr>) {
        let metrics = self.raft.metrics().borrow().clone();
        let mut catch_up = self.catch_up.lock().expect("catch-up lock");
        if let CatchUp::Until(target) = *catch_up {
            if metrics.last_applied.is_some_and(|l| l.index >= target) {
                tracing::info!(target, "caught up after starting on an empty disk; voting again");
                *catch_up = CatchUp::Done;
            }
        }
        let mut boot = self.boot.lock().expect("boot check lock");
        if let BootCheck::Floor { term, .. } = *boot {
            if let Some(applied) = metrics.last_applied.filter(|l| l.leader_id.term > term) {
                tracing::info!(
                    floor = term,
                    applied_term = applied.leader_id.term,
                    "applied an entry of a term above the boot floor; Raft's own vote rules apply again"
                );
                *boot = BootCheck::Lifted;
            }
        }
        (*catch_up, *boot, metrics)
    }

    /// The id of the last entry in this node's log (its store, read now).
    pub(super) async fn last_log_id(&self) -> Option<LogId<NodeId>> {
        use openraft::storage::RaftLogStorage;
        let mut log = crate::raft::log_store::LogStore::new(self.store.clone());
        match log.get_log_state().await {
            Ok(state) => state.last_log_id,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the log's last entry");
                None
            }
        }
    }

    /// Whether this node must not stand for election now: it started on an
    /// empty disk and has not caught up (past a new cluster's bootstrap), or
    /// its term or log is below the boot floor. Its own vote counts like any
    /// other, so a wiped node that stood with the log it had rebuilt so far
    /// could be elected by voters that lack committed entries it had held
    /// before the wipe (the simulator lost a committed entry that way: chaos
    /// seed 403, where time refusals had held two followers back).
    pub(super) async fn standing_barred(&self) -> bool {
        let (catch_up, boot, metrics) = self.gates_now();
        let bootstrap = metrics.last_log_index.is_none_or(|i| i == 0);
        if bootstrap {
            return false;
        }
        if matches!(catch_up, CatchUp::AwaitingLeader | CatchUp::Until(_)) {
            return true;
        }
        match boot {
            BootCheck::Waiting => true,
            BootCheck::Floor { term, log } => metrics.vote.leader_id.term < term || self.last_log_id().await < log,
            BootCheck::Lifted => false,
        }
    }

    /// A refusal when this node started on an empty disk and has not caught
    /// up, or when the request is below the boot floor; `None` when Raft may
    /// decide the vote.
    pub(super) fn refuse_vote(&self, request: &VoteRequest<NodeId>) -> Option<VoteResponse<NodeId>> {
        let (catch_up, boot, metrics) = self.gates_now();
        let bootstrap = request.last_log_id.is_none_or(|l| l.index == 0);
        if bootstrap {
            return None;
        }
        let refuse = |why: String| {
            tracing::info!(candidate = %request.vote, why, "refusing a vote");
            Some(VoteResponse { vote: metrics.vote, vote_granted: false, last_log_id: None })
        };
        if matches!(catch_up, CatchUp::AwaitingLeader | CatchUp::Until(_)) {
            return refuse(format!("started on an empty disk and not caught up yet ({catch_up:?})"));
        }
        match below_floor(boot, request) {
            Some(why) => refuse(format!("this node's disk may have been rolled back since its last vote: {why}")),
            None => None,
        }
    }

    /// One round of the boot check: asks every other voter for its vote and
    /// last log id; once a majority answered, sets the floor and takes its
    /// term as this node's own, and later rounds may lower its log. True when
    /// the check is over: every other voter answered, or the floor lifted.
    async fn boot_check_round(&self) -> bool {
        let before = *self.boot.lock().expect("boot check lock");
        if before == BootCheck::Lifted {
            return true;
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&self.id) {
            // An empty disk learns the voters from its log; a learner never votes.
            tracing::debug!(node = self.id, "boot check: not a voter (yet)");
            return false;
        }
        let others: Vec<(NodeId, String)> = voters
            .iter()
            .filter(|id| **id != self.id)
            .filter_map(|id| membership.get_node(id).map(|a| (*id, a.raft_addr.clone())))
            .collect();
        let asks = others.iter().map(|(id, addr)| {
            let call = self.transport.call(*id, addr.clone(), PeerRequest::Ping, BOOT_ASK_TIMEOUT);
            async move {
                match call.await {
                    Ok(PeerResponse::Pong { vote: Some(vote), last_log, .. }) => Ok((vote, last_log)),
                    Ok(other) => Err(format!("node {id}: {}", short(&format!("{other:?}")))),
                    Err(e) => Err(format!("node {id}: {e}")),
                }
            }
        });
        let (answers, silent): (Vec<_>, Vec<_>) =
            futures::future::join_all(asks).await.into_iter().partition(|r| r.is_ok());
        let answers: Vec<_> = answers.into_iter().flatten().collect();
        let Some(floor) = floor_of(others.len(), &answers) else {
            let silent: Vec<String> = silent.into_iter().filter_map(Result::err).collect();
            tracing::info!(
                node = self.id,
                answered = answers.len(),
                needed = answers_needed(others.len()),
                ?silent,
                "boot check: grants no vote until a majority of the other voters has answered"
            );
            return false;
        };
        let after = {
            let mut boot = self.boot.lock().expect("boot check lock");
            *boot = merge(*boot, floor);
            *boot
        };
        let everyone = answers.len() == others.len();
        let BootCheck::Floor { term, log } = after else { return true };
        if after == before {
            return everyone;
        }
        tracing::info!(
            node = self.id,
            term,
            log = %show(log),
            answered = answers.len(),
            "boot check: this node's disk may have been rolled back; it votes only in terms above {term}, \
             and only for logs ending at or after {}",
            show(log)
        );
        // Take the floor's term as this node's own, voting for nobody: a vote
        // for no node in that term (`voted_for: None`, the least vote of the
        // term in openraft's order, so a leader of the term is still followed),
        // given to openraft as a request whose answer is dropped. Without it a
        // node whose term is below the floor could never stand (a candidacy is
        // a vote for itself in a term it may already have voted in), and if the
        // node with the longest log were such a node, no leader could be
        // elected after a whole-cluster restart.
        if metrics.vote.leader_id.term < term {
            let nobody = Vote { leader_id: openraft::LeaderId { term, voted_for: None }, committed: false };
            let adopt = VoteRequest { vote: nobody, last_log_id: self.last_log_id().await };
            if let Err(e) = self.raft.vote(adopt).await {
                tracing::warn!(error = %e, term, "could not take the boot floor's term");
            }
        }
        everyone
    }
}

/// Makes a vote on this node's disk that says it leads (committed, for
/// itself) a plain candidacy again, before Raft starts. openraft 0.9 resumes
/// leading at once from such a vote; on a rolled-back disk the node would then
/// append new entries at indexes where it had already committed others in the
/// same term, and committed entries would change (the simulator found it at
/// once). So a restarted leader follows, and the cluster elects again.
pub(super) async fn step_down_from_disk(
    log: &mut crate::raft::log_store::LogStore,
    id: NodeId,
) -> Result<(), openraft::StorageError<NodeId>> {
    use openraft::storage::RaftLogStorage;
    if let Some(vote) = log.read_vote().await? {
        if vote.committed && vote.leader_id.voted_for == Some(id) {
            tracing::info!(%vote, "this node led before it stopped; it follows until the cluster elects again");
            log.save_vote(&Vote { leader_id: vote.leader_id, committed: false }).await?;
        }
    }
    Ok(())
}

/// How long the boot check waits for one peer's answer.
const BOOT_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the boot check: waits `wait` (one maximum election timeout), then asks
/// every `retry` until a majority of the other voters has answered.
pub(super) async fn boot_check(node: std::sync::Weak<Node>, wait: std::time::Duration, retry: std::time::Duration) {
    tokio::time::sleep(wait).await;
    loop {
        let Some(n) = node.upgrade() else { return };
        if n.boot_check_round().await {
            return;
        }
        drop(n);
        tokio::time::sleep(retry).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn vote(term: u64, node: NodeId) -> Vote<NodeId> {
        Vote::new(term, node)
    }

    fn log(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 0), index))
    }

    fn ask(term: u64, node: NodeId, last: Option<LogId<NodeId>>) -> VoteRequest<NodeId> {
        VoteRequest { vote: vote(term, node), last_log_id: last }
    }

    #[test]
    fn boot_check_needs_a_majority_of_the_others() {
        assert_eq!(answers_needed(0), 0, "a single-node cluster has nobody to ask");
        assert_eq!(answers_needed(2), 2, "3 nodes: both others");
        assert_eq!(answers_needed(3), 2, "4 nodes");
        assert_eq!(answers_needed(4), 3, "5 nodes");
        // Any majority of n nodes minus this one, plus a majority of the others, exceeds the others.
        for n in 2..=9usize {
            let majority_without_me = n / 2 + 1 - 1;
            assert!(majority_without_me + answers_needed(n - 1) > n - 1, "n = {n}");
        }
    }

    #[test]
    fn boot_floor_refuses_old_terms_and_short_logs() {
        let floor = floor_of(2, &[(vote(7, 2), log(6, 40)), (vote(5, 3), log(7, 30))]).expect("both others answered");
        assert_eq!(floor, BootCheck::Floor { term: 7, log: log(7, 30) }, "term first, then index, as Raft orders logs");
        let why = below_floor(floor, &ask(7, 4, log(7, 30))).expect("a vote in the floor's term is refused");
        assert!(why.contains("not above term 7"), "{why}");
        let why = below_floor(floor, &ask(8, 4, log(6, 90))).expect("a log of an older term is refused");
        assert!(why.contains("ends at index 90 of term 6"), "{why}");
        assert_eq!(below_floor(floor, &ask(8, 4, log(7, 30))), None);
        assert_eq!(below_floor(BootCheck::Lifted, &ask(1, 4, None)), None);
        assert!(below_floor(BootCheck::Waiting, &ask(99, 4, log(99, 1))).is_some());
    }

    #[test]
    fn boot_floor_log_is_the_rank_enough_answers_hold() {
        let a = |index| (vote(3, 1), log(3, index));
        // 5 nodes: 2 of a bare majority of the 4 others answered is too few.
        assert_eq!(floor_of(4, &[a(50), a(40)]), None);
        // 3 of 4 answered: only 1 of them surely holds an entry this node acknowledged.
        assert_eq!(floor_of(4, &[a(50), a(40), a(45)]), Some(BootCheck::Floor { term: 3, log: log(3, 50) }));
        // All 4 answered: 2 of them hold it, so a deposed leader's longer tail does not count.
        assert_eq!(floor_of(4, &[a(90), a(40), a(45), a(41)]), Some(BootCheck::Floor { term: 3, log: log(3, 45) }));
        // A later round can lower the log, never the term.
        let first = floor_of(4, &[a(90), a(40), a(45)]).unwrap();
        let later = floor_of(4, &[(vote(4, 2), log(3, 91)), a(41), a(46), a(42)]).unwrap();
        assert_eq!(merge(first, later), BootCheck::Floor { term: 3, log: log(3, 46) });
        // A single-node cluster has nobody to ask.
        assert_eq!(floor_of(0, &[]), Some(BootCheck::Floor { term: 0, log: None }));
    }
}
