//! Signing formats (rules 9) in every node's state ([`FormatsHold`]):
//! - `format-unreadable`: every pending or signed request's bytes parse as the
//!   format it declares (raw when none): the message the node holds while the
//!   request is pending, or, once the state dropped it, the one the client sent;
//! - `format-policy-bypassed`: its key's policy as it was when the request was
//!   made (the policy version the request names) allows its format and its
//!   SSHSIG namespace; and no probe in a namespace the policy leaves out was
//!   answered applied;
//! - `minisign-global-mismatch`: every minisign global signature request signs
//!   exactly its parent's committed signature followed by the parent's trusted
//!   comment (the one the client sent), is made once its parent is signed and
//!   signed only after it, and every signed minisign request has one;
//! - `malformed-format-accepted`: no request whose bytes do not parse as its
//!   declared format (the workload's malformed probes) is ever in any node's
//!   state, in any status, nor answered applied.
//!
//! A request is judged once per node and status. The planted
//! `ignore-namespace-policy` (a key kept to `git` signs in any namespace) and
//! `global-signs-without-comment` (the global signature request leaves the
//! comment out) must be caught here.

use std::collections::{BTreeMap, BTreeSet};

use sha2::Digest;
use synod_node::state::{ClusterState, RequestRecord, RequestStatus};
use synod_proto::authz::Policy;
use synod_proto::format::SignFormat;
use synod_proto::NodeId;

use super::{Checker, Step, Violation};
use crate::workload::{History, ProbeKind};

#[derive(Default)]
pub struct FormatsHold {
    /// Every key policy seen, by (key id, policy version): a request is judged
    /// by the policy its version names, whatever the key's policy is now.
    policies: BTreeMap<(String, u64), Policy>,
    /// (node, request id, attempt, signed) judged already.
    judged: BTreeSet<(NodeId, String, u32, bool)>,
    /// How many probe answers were judged already.
    probes_judged: usize,
}

impl FormatsHold {
    fn check_node(&mut self, id: NodeId, state: &ClusterState, history: &History) -> Result<(), Violation> {
        for key in state.keys.values() {
            self.policies.entry((key.id.clone(), key.policy_version)).or_insert_with(|| key.policy.clone());
        }
        for (request_id, r) in &state.requests {
            if let Some(probe) = history.format_probes.get(request_id).filter(|p| p.kind == ProbeKind::Malformed) {
                return Err(Violation::new(
                    "malformed-format-accepted",
                    format!(
                        "n{id} holds request {request_id} ({:?}), whose bytes ({}) do not parse as {}, the format \
                         it declares",
                        r.status,
                        hex::encode(&probe.message),
                        probe.format
                    ),
                ));
            }
            let signed = matches!(r.status, RequestStatus::Signed { .. });
            if !(signed || r.status == RequestStatus::Pending) {
                continue;
            }
            if !self.judged.insert((id, request_id.clone(), r.attempt, signed)) {
                continue;
            }
            let global = r.format.as_ref().and_then(|f| f.global_of.as_deref());
            match global {
                Some(parent) => Self::global(id, state, r, parent, history)?,
                None => self.declared(id, r, history)?,
            }
            if signed && r.format.as_ref().is_some_and(|f| f.format == SignFormat::Minisign && f.global_of.is_none()) {
                let global = synod_proto::format::minisign::global_request_id(request_id);
                if !state.requests.contains_key(&global) {
                    return Err(Violation::new(
                        "minisign-global-mismatch",
                        format!(
                            "n{id}: minisign request {request_id} is signed but its global request {global} is absent"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A request a client (or a node, for its audit checkpoints) made: its bytes
    /// parse as its format, which its key's policy allows.
    fn declared(&self, id: NodeId, r: &RequestRecord, history: &History) -> Result<(), Violation> {
        let request_id = &r.request_id;
        let format = r.format.as_ref().map_or(SignFormat::Raw, |f| f.format);
        let sent = history.sent.get(request_id).map(|s| s.message.clone());
        let probe = history.format_probes.get(request_id).map(|p| p.message.clone());
        let message = r.message_bytes().or(sent).or(probe);
        let inspection = match message {
            Some(bytes) => Some(synod_proto::format::inspect(format, &bytes).map_err(|e| {
                Violation::new(
                    "format-unreadable",
                    format!("n{id} holds request {request_id} ({:?}) declared {format}: {e}", r.status),
                )
            })?),
            None => None,
        };
        // What the node read must be what the bytes say.
        if let (Some(read), Some(info)) = (&inspection, &r.format) {
            if read.namespace != info.inspection.namespace || read.artifact_hash != info.inspection.artifact_hash {
                return Err(Violation::new(
                    "format-unreadable",
                    format!(
                        "n{id} holds request {request_id} as {format} naming {:?} {:?}, but its bytes name {:?} {:?}",
                        info.inspection.namespace, info.inspection.artifact_hash, read.namespace, read.artifact_hash
                    ),
                ));
            }
        }
        let Some(policy) = self.policies.get(&(r.key_id.clone(), r.policy_version)) else { return Ok(()) };
        let bypassed = |why: String| {
            Violation::new(
                "format-policy-bypassed",
                format!("n{id} holds request {request_id} ({:?}): {why}", r.status),
            )
        };
        if !policy.formats.is_empty() && !policy.formats.contains(&format) {
            return Err(bypassed(format!(
                "it is {format}, but its key's policy (version {}) allows only {:?}",
                r.policy_version, policy.formats
            )));
        }
        let namespace = r.format.as_ref().and_then(|f| f.inspection.namespace.as_ref());
        if let Some(namespace) = namespace.filter(|n| !policy.namespaces.is_empty() && !policy.namespaces.contains(n)) {
            return Err(bypassed(format!(
                "it is in SSHSIG namespace {namespace:?}, but its key's policy (version {}) allows only {:?}",
                r.policy_version, policy.namespaces
            )));
        }
        Ok(())
    }

    /// A minisign global signature request: it signs exactly its parent's
    /// committed signature and trusted comment, after the parent.
    fn global(
        id: NodeId,
        state: &ClusterState,
        r: &RequestRecord,
        parent_id: &str,
        history: &History,
    ) -> Result<(), Violation> {
        let request_id = &r.request_id;
        let fail = |why: String| {
            Violation::new(
                "minisign-global-mismatch",
                format!("n{id}: global signature request {request_id} of {parent_id} ({:?}): {why}", r.status),
            )
        };
        if *request_id != synod_proto::format::minisign::global_request_id(parent_id) {
            return Err(fail("its id is not the one its parent's id fixes".into()));
        }
        let parent = state.requests.get(parent_id).ok_or_else(|| fail("its parent is not in the state".into()))?;
        let RequestStatus::Signed { signature } = &parent.status else {
            return Err(fail(format!("its parent is {:?}, not signed", parent.status)));
        };
        let comment = parent.format.as_ref().and_then(|f| f.trusted_comment.clone()).unwrap_or_default();
        if let Some(sent) = history.sent.get(parent_id).and_then(|s| s.trusted_comment.as_ref()) {
            if *sent != comment {
                return Err(fail(format!("its parent's comment is {comment:?}, but the client sent {sent:?}")));
            }
        }
        let mut expected = hex::decode(signature).unwrap_or_default();
        expected.extend_from_slice(comment.as_bytes());
        let expected_sha256 = hex::encode(sha2::Sha256::digest(&expected));
        let wrong = match r.message_bytes() {
            Some(message) => message != expected,
            None => r.message_sha256 != expected_sha256,
        };
        if wrong {
            return Err(fail(format!(
                "it signs message {} ({} bytes), not its parent's signature {}… followed by the trusted comment \
                 {comment:?} ({})",
                &r.message_sha256[..12.min(r.message_sha256.len())],
                r.message_bytes,
                &signature[..16.min(signature.len())],
                &expected_sha256[..12]
            )));
        }
        let finished = |x: &RequestRecord| x.finished_at_ms.unwrap_or(u64::MAX);
        if r.created_at_ms < parent.created_at_ms
            || matches!(r.status, RequestStatus::Signed { .. }) && finished(r) < finished(parent)
        {
            return Err(fail(format!(
                "it was made at {} ms and signed at {:?}, but its parent was signed at {:?}",
                r.created_at_ms, r.finished_at_ms, parent.finished_at_ms
            )));
        }
        Ok(())
    }

    /// No probe the cluster must refuse was answered applied.
    fn probe_answers(&mut self, history: &History) -> Result<(), Violation> {
        let answered: Vec<_> = history.format_probes.iter().filter(|(_, p)| p.answer.is_some()).collect();
        if answered.len() == self.probes_judged {
            return Ok(());
        }
        self.probes_judged = answered.len();
        for (request_id, probe) in answered {
            if let Some(Ok(detail)) = &probe.answer {
                let invariant = match probe.kind {
                    ProbeKind::Malformed => "malformed-format-accepted",
                    ProbeKind::ForbiddenNamespace => "format-policy-bypassed",
                };
                return Err(Violation::new(
                    invariant,
                    format!(
                        "request {request_id} on key {} ({:?}, {} bytes declared {}) was answered applied: {detail}",
                        probe.key,
                        probe.kind,
                        probe.message.len(),
                        probe.format
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Checker for FormatsHold {
    fn name(&self) -> &'static str {
        "formats-hold"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes.iter().filter(|v| v.moved) {
            self.check_node(v.id, &v.node.state().read().state, step.history)?;
        }
        self.probe_answers(step.history)
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            self.check_node(v.id, &v.node.state().read().state, step.history)?;
        }
        self.probe_answers(step.history)
    }
}
