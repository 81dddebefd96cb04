//! What must be live after the heal ([`SigningLiveness`]): with every node up
//! and the network healed, every key the run generates becomes active
//! (`key-generation-liveness`) and every sign request is signed
//! (`signing-liveness-after-heal`) within a bound, counted from the heal or
//! from a later submission. Nothing is required before the heal. It holds
//! because, once faults stop, a leader is elected, key generation
//! participants send their lost messages again, coordinators start new
//! sessions with fresh nonces and leave culprits out, and clients retry. (The
//! driver in `run.rs` checks the rest of liveness: writes complete, nodes
//! converge.)

use super::{Checker, Step, Violation};
use crate::workload::Phase;

/// After the heal, with every node up, every key the run generates becomes
/// active, and every sign request is signed, within `bound_ms` (of the heal,
/// or of the request's submission if later).
pub struct SigningLiveness {
    pub bound_ms: u64,
    /// The keys this run generates.
    pub keys: Vec<&'static str>,
}

impl Checker for SigningLiveness {
    fn name(&self) -> &'static str {
        "signing-liveness-after-heal"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        let Phase::Healed { at_ms } = step.history.phase else { return Ok(()) };
        if step.now_ms <= at_ms + self.bound_ms {
            return Ok(());
        }
        if let Some(name) = self.keys.iter().find(|k| !step.history.keys.contains_key(**k)) {
            return Err(Violation::new(
                "key-generation-liveness",
                format!(
                    "{} ms after the heal, with every node up, key {name} is not active ({} create_key commands sent)",
                    self.bound_ms,
                    step.history.key_attempts.get(*name).copied().unwrap_or(0)
                ),
            ));
        }
        for (request_id, submitted) in &step.history.sign_pending {
            let since = (*submitted).max(at_ms);
            if step.now_ms > since + self.bound_ms {
                return Err(Violation::new(
                    "signing-liveness-after-heal",
                    format!(
                        "request {request_id} (submitted at {submitted} ms) is not signed {} ms after {}",
                        self.bound_ms,
                        if *submitted > at_ms { "its submission" } else { "the heal" }
                    ),
                ));
            }
        }
        Ok(())
    }
}
