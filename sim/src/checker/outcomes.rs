//! What nodes say a command did (`GetCommand`, `GET /v1/commands/{id}`)
//! matches the committed log ([`CommandOutcomesMatchLog`]). Clients ask when
//! a write's answer was lost or a retry was refused as a replay, after some
//! ordinary acknowledgements, and the adversary asks every node after it
//! replayed an applied write; every answer is in `History::lookups`. The
//! command's entries are found in the log by its signature.
//!
//! An admin's `put` in the simulator is applied at its first committed entry
//! (the admin's authority never changes and its command outlives the run) and
//! refused as a replay at every later one. So an answer contradicts the log
//! when it says:
//! - applied at index i, and the entry committed at i is another command, or
//!   the command was committed at an earlier index (where it applied);
//! - refused at index j, and the command was committed at an earlier index:
//!   a replay's refusal replaced the applied record (the planted
//!   `overwrite-applied-outcome`);
//! - not known and never to commit, and the command is in the log;
//! - not known, by a node that has applied past the index the command was
//!   applied at.
//!
//! A write whose entry an equivocating leader altered is left out: the
//! followers that got the altered version refused it unrecorded (its
//! signature fails) and may apply the adversary's replay of it later, so the
//! nodes' records of it differ by design.

use std::collections::{BTreeMap, BTreeSet};

use synod_proto::api::CommandStatus;
use synod_proto::Envelope;

use super::{Checker, EntryRecord, Step, Violation};
use crate::workload::Lookup;

/// Every lookup answer agrees with the committed log (see the module docs).
#[derive(Default)]
pub struct CommandOutcomesMatchLog {
    /// The committed indexes that carry each command, by its signature, from
    /// every entry applied anywhere.
    carried: BTreeMap<String, BTreeSet<u64>>,
    /// Lookups (by position in the history) that wait for an entry to be seen applied.
    waiting: BTreeSet<usize>,
    /// How many lookups have been queued.
    cursor: usize,
}

/// What one answer says against the log seen so far.
enum Judged {
    Fine,
    /// Needs an entry not seen applied yet.
    Wait,
    Broken(String),
}

const INVARIANT: &str = "command-outcome-contradicts-log";

impl CommandOutcomesMatchLog {
    fn entry_at<'a>(step: &'a Step, index: u64) -> Option<&'a EntryRecord> {
        let seen = || step.nodes.iter().flat_map(|v| &v.new_entries).find(|e| e.index == index);
        step.committed.get(&index).or_else(seen)
    }

    fn judge(&self, step: &Step, lookup: &Lookup) -> Judged {
        if step.equivocations.values().any(|e| e.key == lookup.key) {
            return Judged::Fine;
        }
        let signature = &lookup.command.signature;
        let carried = self.carried.get(signature);
        let first = carried.and_then(|c| c.first()).copied();
        let answer = &lookup.answer;
        let said = |what: String| {
            let command_id = serde_json::from_str::<Envelope>(&lookup.command.envelope)
                .map(|e| e.command_id)
                .unwrap_or_else(|_| "?".into());
            let log: Vec<u64> = carried.map(|c| c.iter().copied().collect()).unwrap_or_default();
            Judged::Broken(format!(
                "write {} (command {command_id}), asked of n{} at t={} ms ({:?}): n{} {what}; the committed log \
                 carries this command at indexes {log:?}",
                lookup.key, lookup.node, lookup.at_ms, lookup.cause, lookup.node
            ))
        };
        match (answer.status, answer.index) {
            (CommandStatus::Applied, Some(i)) => {
                let Some(entry) = Self::entry_at(step, i) else { return Judged::Wait };
                if entry.signature.as_deref() != Some(signature.as_str()) {
                    return said(format!(
                        "says it was applied at index {i}, but the entry committed there (first seen on n{}, term {}) \
                         is another command",
                        entry.node, entry.term
                    ));
                }
                match first.filter(|f| *f < i) {
                    Some(f) => said(format!(
                        "says it was applied at index {i}, but it was committed first at index {f}, where it applied; \
                         its later entries are refused replays"
                    )),
                    None => Judged::Fine,
                }
            }
            (CommandStatus::Applied, None) => Judged::Fine,
            (CommandStatus::Rejected, Some(j)) => {
                if Self::entry_at(step, j).is_none() {
                    return Judged::Wait;
                }
                match first.filter(|f| *f < j) {
                    Some(f) => said(format!(
                        "says it was refused at index {j} ({:?}), but it was applied at index {f}: the refusal of a \
                         later entry replaced the applied record",
                        answer.outcome
                    )),
                    None => Judged::Fine,
                }
            }
            (CommandStatus::Rejected, None) => Judged::Fine,
            (CommandStatus::Unknown, _) if answer.is_final => match first {
                Some(f) => said(format!(
                    "says it is not in its log up to index {} and can never commit, but it was applied at index {f}",
                    answer.applied_index
                )),
                None => Judged::Wait,
            },
            (CommandStatus::Unknown, _) => match first.filter(|f| *f <= answer.applied_index) {
                Some(f) => said(format!(
                    "has applied up to index {} and says it does not know the command, which was applied at index {f}",
                    answer.applied_index
                )),
                None => Judged::Fine,
            },
        }
    }

    /// Indexes this step's entries and judges every waiting lookup.
    fn judge_waiting(&mut self, step: &Step) -> Result<(), Violation> {
        for e in step.nodes.iter().flat_map(|v| &v.new_entries) {
            let Some(signature) = &e.signature else { continue };
            match self.carried.get_mut(signature) {
                Some(indexes) => {
                    indexes.insert(e.index);
                }
                None => {
                    self.carried.insert(signature.clone(), BTreeSet::from([e.index]));
                }
            }
        }
        self.waiting.extend(self.cursor..step.history.lookups.len());
        self.cursor = step.history.lookups.len();
        let mut judged = Vec::new();
        for &i in &self.waiting {
            match self.judge(step, &step.history.lookups[i]) {
                Judged::Fine => judged.push(i),
                Judged::Wait => {}
                Judged::Broken(detail) => return Err(Violation::new(INVARIANT, detail)),
            }
        }
        for i in judged {
            self.waiting.remove(&i);
        }
        Ok(())
    }
}

impl Checker for CommandOutcomesMatchLog {
    fn name(&self) -> &'static str {
        "command-outcomes-match-log"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        self.judge_waiting(step)
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        self.judge_waiting(step)
    }
}
