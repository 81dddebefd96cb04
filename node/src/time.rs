//! Bounded state-machine time: what an honest leader stamps on an entry and
//! which stamps a follower accepts.
//!
//! State-machine time is the `time_ms` of the entries applied so far (clamped
//! so it never goes backwards), so it decides when commands, requests and
//! approvals expire. One clock must not move it: an honest leader stamps the
//! median of its own clock and its voters' clocks (each follower reports its
//! clock in every AppendEntries answer), and a follower refuses entries stamped
//! more than `raft.clock_skew_ms_max` ahead of its own clock. With a majority
//! of correct clocks the median is within the honest skew of true time, so an
//! honest leader whose own clock is wrong still stamps close to true time, and
//! a leader that stamps far ahead cannot find a majority to commit it.
//! Pure functions only: the node wires them to its clock, its peers' reports
//! and its Raft metrics (`node/time.rs`).

use std::collections::{BTreeMap, BTreeSet};

use openraft::EntryPayload;
use synod_proto::{NodeId, TypeConfig};

/// The default of `raft.clock_skew_ms_max`: how far ahead of a follower's
/// clock an entry may be stamped. Well above honest clock error (NTP keeps
/// clocks within a second; the simulator's honest skews and jumps reach 70 s).
pub const CLOCK_SKEW_MS_MAX_DEFAULT: u64 = 5 * 60 * 1000;

/// The time a majority of clocks agrees on: the lower median of this node's
/// clock and the fresh estimates of the other voters' clocks, or `None` when
/// fewer than a majority of the voters (this node included, if it votes) have
/// a clock to count. The lower median of a majority sample is never above the
/// clock of an honest node when at most a minority of the sample runs ahead.
pub fn majority_clock_ms(
    own_id: NodeId,
    own_ms: u64,
    voters: &BTreeSet<NodeId>,
    estimates: &BTreeMap<NodeId, u64>,
) -> Option<u64> {
    let mut clocks: Vec<u64> =
        voters.iter().filter(|v| **v != own_id).filter_map(|v| estimates.get(v).copied()).collect();
    clocks.push(own_ms);
    let majority = voters.len() / 2 + 1;
    if clocks.len() < majority {
        return None;
    }
    clocks.sort_unstable();
    Some(clocks[(clocks.len() - 1) / 2])
}

/// The stamp for a new entry: the majority's time (or, without one, this
/// node's clock), raised to the state's time when that is at most
/// `skew_ms_max / 2` ahead, so that an honest stamp does not go backwards. A
/// state time further ahead (a log already stamped ahead, see ARCHITECTURE.md)
/// is not copied: followers would refuse the stamp, and applying keeps the
/// state's time anyway.
pub fn stamp_ms(majority_ms: u64, state_ms: u64, skew_ms_max: u64) -> u64 {
    if state_ms > majority_ms && state_ms - majority_ms <= skew_ms_max / 2 {
        return state_ms;
    }
    majority_ms
}

/// The first entry stamped more than `skew_ms_max` ahead of `own_ms`, as its
/// index and how far ahead of `own_ms` it is. Entries without a time (blank,
/// membership) never count.
pub fn first_entry_ahead(entries: &[openraft::Entry<TypeConfig>], own_ms: u64, skew_ms_max: u64) -> Option<(u64, u64)> {
    entries.iter().find_map(|entry| match &entry.payload {
        EntryPayload::Normal(e) if e.time_ms > own_ms.saturating_add(skew_ms_max) => {
            Some((entry.log_id.index, e.time_ms - own_ms))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn time_median_ignores_a_minority_of_wrong_clocks() {
        // A leader whose own clock is 200 days ahead (or behind) stamps within the honest spread
        // when the other voters' clocks agree; two wrong clocks of five move it no further.
        let far = 200 * 86_400_000;
        let honest: BTreeMap<NodeId, u64> = [(2, 1_000), (3, 1_010), (4, 990), (5, 1_005)].into();
        let all = voters(&[1, 2, 3, 4, 5]);
        assert_eq!(majority_clock_ms(1, 1_000 + far, &all, &honest), Some(1_005));
        assert_eq!(majority_clock_ms(1, 0, &all, &honest), Some(1_000));
        let two_wrong: BTreeMap<NodeId, u64> = [(2, 1_000 + far), (3, 1_010), (4, 990), (5, 1_005)].into();
        assert_eq!(majority_clock_ms(1, 1_000 + far, &all, &two_wrong), Some(1_010));
    }

    #[test]
    fn time_median_needs_a_majority_of_clocks() {
        // Without fresh estimates from a majority of the voters there is no majority time; a
        // single voter is its own majority.
        let all = voters(&[1, 2, 3, 4, 5]);
        let two: BTreeMap<NodeId, u64> = [(2, 1_000), (9, 5)].into();
        assert_eq!(majority_clock_ms(1, 2_000, &all, &two), None);
        let three: BTreeMap<NodeId, u64> = [(2, 1_000), (3, 1_200)].into();
        assert_eq!(majority_clock_ms(1, 2_000, &all, &three), Some(1_200));
        assert_eq!(majority_clock_ms(1, 7, &voters(&[1]), &BTreeMap::new()), Some(7));
    }

    #[test]
    fn time_stamp_does_not_go_back_nor_copy_a_far_state() {
        // A stamp is raised to a state time slightly ahead, never to one far ahead.
        assert_eq!(stamp_ms(1_000, 900, 300_000), 1_000);
        assert_eq!(stamp_ms(1_000, 2_000, 300_000), 2_000);
        assert_eq!(stamp_ms(1_000, 1_000 + 200 * 86_400_000, 300_000), 1_000);
    }

    #[test]
    fn time_gate_finds_the_first_entry_ahead() {
        // An entry stamped beyond the allowance is found with its index and how far ahead it is;
        // one just inside it and a blank entry are not.
        use openraft::{CommittedLeaderId, Entry, LogId};
        let entry = |index: u64, payload: EntryPayload<TypeConfig>| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload,
        };
        let normal = |time_ms| {
            let command = synod_proto::SignedCommand {
                envelope: String::new(),
                author: synod_proto::OperatorKey([1; 32]),
                signature: String::new(),
                certificate: None,
            };
            EntryPayload::Normal(synod_proto::LogEntry { time_ms, command })
        };
        let entries =
            vec![entry(4, EntryPayload::Blank), entry(5, normal(1_000 + 300_000)), entry(6, normal(1_000 + 300_001))];
        assert_eq!(first_entry_ahead(&entries, 1_000, 300_000), Some((6, 300_001)));
        assert_eq!(first_entry_ahead(&entries[..2], 1_000, 300_000), None);
    }
}
