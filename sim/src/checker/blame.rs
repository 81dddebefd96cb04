//! Culprit blame ([`HonestNotBlamed`]): only the run's byzantine signer is
//! ever named a culprit, of a sign request, of an aborted key generation, or
//! of an aborted refresh or repair.
//! It holds because a culprit is named only on evidence an honest node cannot
//! produce: a signature share that fails verification against the signer's
//! commitments and public share (FROST's cheater detection), or a round-2 key
//! generation or refresh value that does not match the sender's committed
//! round-1 commitments, or a repair value that does not match its sender's
//! committed public value. A participant whose committed round-1 package is not the one
//! it holds the secret for (it restarted mid-generation) aborts naming nobody.

use synod_node::state::ClusterState;
use synod_proto::NodeId;

use super::{Checker, Step, Violation};

/// Only a byzantine signer is ever named a culprit: on every node, the
/// culprits of every request (signers whose share failed verification) and of
/// every aborted key generation (a participant whose round-2 package did not
/// match its round-1 commitments) are the run's byzantine signer, if any. An
/// honest signer named culprit would be left out of sessions for a minute, or
/// of the key made again: one lie could then stall signing.
pub struct HonestNotBlamed {
    pub byzantine: Option<NodeId>,
}

impl HonestNotBlamed {
    fn check_node(&self, id: NodeId, state: &ClusterState) -> Result<(), Violation> {
        for (request_id, r) in &state.requests {
            if let Some(honest) = r.culprits.iter().find(|c| Some(**c) != self.byzantine) {
                return Err(Violation::new(
                    "honest-signer-blamed",
                    format!(
                        "n{id} holds request {request_id} naming n{honest} a culprit; the byzantine signer is {:?}",
                        self.byzantine
                    ),
                ));
            }
        }
        for key in state.keys.values() {
            if let synod_node::state::KeyStatus::Aborted { culprit: Some(honest), reason } = &key.status {
                if Some(*honest) != self.byzantine {
                    return Err(Violation::new(
                        "honest-signer-blamed",
                        format!(
                            "n{id} holds key {} aborted naming n{honest} the culprit ({reason}); the byzantine \
                             signer is {:?}",
                            key.name, self.byzantine
                        ),
                    ));
                }
            }
            if let Some(failed) =
                key.refresh_failed.as_ref().filter(|f| f.culprit.is_some_and(|c| Some(c) != self.byzantine))
            {
                return Err(Violation::new(
                    "honest-signer-blamed",
                    format!(
                        "n{id} holds key {}'s refresh to generation {} aborted naming n{} the culprit ({}); the \
                         byzantine signer is {:?}",
                        key.name,
                        failed.generation,
                        failed.culprit.unwrap_or_default(),
                        failed.reason,
                        self.byzantine
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Checker for HonestNotBlamed {
    fn name(&self) -> &'static str {
        "honest-signer-blamed"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes.iter().filter(|v| v.moved) {
            self.check_node(v.id, &v.node.state().read().state)?;
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            self.check_node(v.id, &v.node.state().read().state)?;
        }
        Ok(())
    }
}
