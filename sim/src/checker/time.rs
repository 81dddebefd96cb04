//! Bounded state-machine time ([`BoundedTime`]): no node's state time is ever
//! ahead of the simulated true time by more than the honest clock error (the
//! plan's largest skew plus its largest jump) plus the followers' allowance
//! (`raft.clock_skew_ms_max`). A leader that stamps its entries far ahead (the
//! `time_leaders` fault) must not find a majority to commit them: followers
//! refuse entries stamped beyond their allowance, and honest leaders stamp the
//! time of a majority of clocks.

use super::{Checker, Step, Violation};
use crate::cluster::EPOCH_MS;

/// State time never runs ahead of true time by more than `bound_ms`.
pub struct BoundedTime {
    /// Honest clock error plus `raft.clock_skew_ms_max`.
    pub bound_ms: u64,
}

impl Checker for BoundedTime {
    fn name(&self) -> &'static str {
        "state-time-ahead"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        let true_ms = EPOCH_MS + step.now_ms;
        for view in step.nodes.iter().filter(|v| v.moved || v.restarted) {
            let state_ms = view.node.state().read().state.time_ms;
            if state_ms > true_ms + self.bound_ms {
                return Err(Violation::new(
                    "state-time-ahead",
                    format!(
                        "n{}'s state time is {} ms ahead of true time (at most {} ms allowed: honest clock error \
                         plus raft.clock_skew_ms_max), at applied index {:?}",
                        view.id,
                        state_ms - true_ms,
                        self.bound_ms,
                        view.applied
                    ),
                ));
            }
        }
        Ok(())
    }
}
