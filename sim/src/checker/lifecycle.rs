//! A key out of service releases nothing ([`OutOfServiceReleasesNothing`]):
//! no signer releases a share for a request whose key its own state held
//! disabled, scheduled for destruction or destroyed when it decided. The
//! (A version a rotation retired counts as out of service.) The
//! releasing signer's state is read at the index it had applied when it
//! checked the request (`Released::checked_at_index`, a fact of the signer's
//! state machine, not a tag of the share): a share released after the status
//! changed there is a violation. A share checked before the change (the
//! status was applied while the share was computed) is not; the request has
//! then been failed by the change, so its signature can never be stored. The
//! planted `skip-key-status` ignores the status everywhere and must be caught.

use std::collections::BTreeSet;

use synod_proto::NodeId;

use super::{Checker, Release, Step, Violation};

#[derive(Default)]
pub struct OutOfServiceReleasesNothing {
    /// Shares judged already, by (node, request id, slot).
    judged: BTreeSet<(NodeId, String, u64)>,
}

impl OutOfServiceReleasesNothing {
    fn judge(release: &Release) -> Result<(), String> {
        let r = &release.released;
        let applied = release.handle.state().read();
        let state = &applied.state;
        let Some(key) = state.requests.get(&r.request_id).and_then(|request| state.keys.get(&request.key_id)) else {
            return Ok(()); // The signing checkers judge shares for requests the signer does not hold.
        };
        if key.status.is_out_of_service() && key.status_index <= r.checked_at_index {
            return Err(format!(
                "key {} is {} in its state since index {}, and it checked the request at index {}",
                key.name,
                key.status.api(),
                key.status_index,
                r.checked_at_index
            ));
        }
        Ok(())
    }
}

impl Checker for OutOfServiceReleasesNothing {
    fn name(&self) -> &'static str {
        "out-of-service-releases-nothing"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for release in step.releases {
            let r = &release.released;
            if !self.judged.insert((release.node, r.request_id.clone(), r.slot)) {
                continue;
            }
            Self::judge(release).map_err(|why| {
                Violation::new(
                    "out-of-service-releases-nothing",
                    format!("n{} released a share for request {} (slot {}): {why}", release.node, r.request_id, r.slot),
                )
            })?;
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        self.check_step(step)
    }
}
