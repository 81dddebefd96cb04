//! Passkey approvals (rules 11) in every node's state ([`PasskeysHold`]):
//! - `passkey-approval-unverified`: every approval a node holds that is a
//!   WebAuthn assertion verifies, with the public key the workload made (not
//!   the node's registry), as an assertion on the simulation's relying party
//!   whose challenge is SHA-256 of the request's approval statement, with
//!   user verification;
//! - `passkey-counter-not-growing`: a credential's approvals, in log order,
//!   carry signature counters that strictly grow (the authenticator keeps
//!   one): a counter that stands still or goes back is a cloned authenticator
//!   or a replay, which every node must refuse.
//!
//! The workload's passkey approver sends, before each real approval, one made
//! by a clone of its authenticator (its counter set back); the planted
//! `passkey-ignores-counter` counts it and must be caught here.

use std::collections::{BTreeMap, BTreeSet};

use synod_node::state::ClusterState;
use synod_proto::authz::approval_bytes;
use synod_proto::webauthn::{self, WebAuthnConfig};
use synod_proto::NodeId;

use super::{Checker, Step, Violation};
use crate::workload::{History, PASSKEY_ORIGIN, PASSKEY_RP_ID};

#[derive(Default)]
pub struct PasskeysHold {
    /// (node, request id, approver, log index) judged already.
    judged: BTreeSet<(NodeId, String, String, u64)>,
}

impl PasskeysHold {
    fn check_node(&mut self, id: NodeId, state: &ClusterState, history: &History) -> Result<(), Violation> {
        let config = WebAuthnConfig {
            rp_id: PASSKEY_RP_ID.into(),
            rp_name: String::new(),
            origins: vec![PASSKEY_ORIGIN.into()],
        };
        // Per credential: (log index, counter, request id) of every passkey approval held.
        let mut counters: BTreeMap<String, Vec<(u64, u32, String)>> = BTreeMap::new();
        for (request_id, r) in &state.requests {
            for a in &r.approvals {
                let Some(assertion) = a.signature.assertion() else { continue };
                let counter = webauthn::from_b64url(&assertion.authenticator_data)
                    .ok()
                    .and_then(|d| d.get(33..37).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes"))))
                    .unwrap_or_default();
                counters.entry(assertion.credential_id.clone()).or_default().push((
                    a.index,
                    counter,
                    request_id.clone(),
                ));
                if !self.judged.insert((id, request_id.clone(), a.approver.clone(), a.index)) {
                    continue;
                }
                let Some(key) = history.passkeys.get(&assertion.credential_id) else {
                    return Err(Violation::new(
                        "passkey-approval-unverified",
                        format!(
                            "n{id} counts an approval of {request_id} by {} with passkey {}, which no approver made",
                            a.approver, assertion.credential_id
                        ),
                    ));
                };
                let Some(statement) = state.approval_statement(r) else { continue };
                let challenge = webauthn::statement_challenge(&approval_bytes(&statement));
                if let Err(e) = webauthn::verify_assertion(&config, key, &assertion, &challenge, true) {
                    return Err(Violation::new(
                        "passkey-approval-unverified",
                        format!(
                            "n{id} counts a passkey approval of {request_id} by {} that does not verify: {e}",
                            a.approver
                        ),
                    ));
                }
            }
        }
        for (credential, mut uses) in counters {
            uses.sort();
            for pair in uses.windows(2) {
                let ((i0, c0, r0), (i1, c1, r1)) = (&pair[0], &pair[1]);
                if (*c1 != 0 || *c0 != 0) && c1 <= c0 {
                    return Err(Violation::new(
                        "passkey-counter-not-growing",
                        format!(
                            "n{id} counts passkey {credential}'s approval of {r1} at index {i1} with counter {c1}, \
                             not above the {c0} of its approval of {r0} at index {i0}: a cloned authenticator's \
                             approval was taken"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Checker for PasskeysHold {
    fn name(&self) -> &'static str {
        "passkeys-hold"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes.iter().filter(|v| v.moved) {
            self.check_node(v.id, &v.node.state().read().state, step.history)?;
        }
        Ok(())
    }
}
