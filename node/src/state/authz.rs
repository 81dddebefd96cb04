//! Operators, roles, signing policies, approvals and admin proposals in the
//! replicated state.
//!
//! Every node evaluates a request's policy itself, in its own committed state:
//! when an approval is applied, and again (re-verifying every approval's
//! signature) in its signer before it releases a share. A leader, a coordinator
//! or a single admin cannot make a node sign what the policy does not allow.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use synod_proto::authz::{
    approval_bytes, denial_bytes, ApprovalSignature, ApprovalStatement, Policy, Role, APPROVAL_SSH_NAMESPACE,
};
use synod_proto::sshsig::SshPublicKey;
use synod_proto::{Command, OperatorKey};

use super::{ClusterState, Refusal, RequestRecord, RequestStatus};

/// An operator: a person or system with a key and roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operator {
    pub name: String,
    /// Signs commands and Ed25519 approvals.
    pub key: Option<OperatorKey>,
    /// An OpenSSH public key line for `ssh-keygen -Y sign` approvals.
    pub ssh_key: Option<String>,
    pub roles: BTreeSet<Role>,
    /// How many of its requests may wait at once, when an admin set it
    /// (otherwise [`super::PENDING_PER_OPERATOR_DEFAULT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_max: Option<u32>,
    /// Approved passkeys (rules 11 and later): console logins, approvals and denials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passkeys: Vec<super::Passkey>,
}

/// One approval of a request, as committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub approver: String,
    pub signature: ApprovalSignature,
    pub index: u64,
    pub at_ms: u64,
}

/// One denial of a request, as committed (rules 10 and later).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialRecord {
    pub approver: String,
    /// Why, in the approver's words; the failed request's reason quotes it.
    pub reason: String,
    /// Over [`denial_bytes`]: what makes the denial the approver's.
    pub signature: ApprovalSignature,
    pub index: u64,
    pub at_ms: u64,
}

/// An admin operation waiting for more admins to agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Proposal {
    pub id: String,
    pub command: Command,
    /// Admins (by name) who agree, the proposer first.
    pub approvals: Vec<String>,
    pub proposer: OperatorKey,
    pub expires_at_ms: u64,
}

/// How far a request is from its policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Every requirement is met.
    pub met: bool,
    /// "1/2 from [alice, bob]" for each requirement.
    pub summary: Vec<String>,
}

impl ClusterState {
    /// The operator whose Ed25519 key (or ssh-ed25519 key) this is.
    pub fn operator_by_key(&self, key: &OperatorKey) -> Option<&Operator> {
        self.operators.values().find(|op| {
            op.key.as_ref() == Some(key)
                || op
                    .ssh_key
                    .as_deref()
                    .and_then(|line| SshPublicKey::parse(line).ok())
                    .is_some_and(|ssh| ssh == SshPublicKey::Ed25519(key.0))
        })
    }

    /// Whether the author of a command holds `role`.
    pub fn has_role(&self, key: &OperatorKey, role: Role) -> bool {
        self.operator_by_key(key).is_some_and(|op| op.roles.contains(&role))
    }

    /// Genesis admins become operators `admin-<first 8 hex of the key>` with the admin and requester roles.
    pub(super) fn genesis_operators(&mut self, admins: &[OperatorKey]) {
        for key in admins {
            let name = format!("admin-{}", &key.to_hex()[..8]);
            let roles = [Role::Admin, Role::Requester].into();
            self.operators.insert(
                name.clone(),
                Operator { name, key: Some(*key), ssh_key: None, roles, pending_max: None, passkeys: Vec::new() },
            );
        }
        self.refresh_admins();
    }

    fn refresh_admins(&mut self) {
        self.admins =
            self.operators.values().filter(|op| op.roles.contains(&Role::Admin)).filter_map(|op| op.key).collect();
    }

    pub(super) fn add_operator(
        &mut self,
        name: &str,
        key: Option<OperatorKey>,
        ssh_key: Option<&str>,
        roles: &[Role],
        pending_max: Option<u32>,
    ) -> Result<String, Refusal> {
        if pending_max.is_some_and(|n| n == 0 || n as usize > super::PENDING_REQUESTS_MAX) {
            return Err(format!(
                "pending_max for {name} must be between 1 and {}, the cluster's whole pending cap",
                super::PENDING_REQUESTS_MAX
            )
            .into());
        }
        if self.operators.contains_key(name) {
            return Err(format!("operator {name} already exists; remove it first to change it").into());
        }
        let ssh_key = match ssh_key {
            Some(line) => Some(SshPublicKey::parse(line).map_err(|e| format!("ssh key of {name}: {e}"))?.to_line()),
            None => None,
        };
        if let Some(k) = &key {
            if let Some(other) = self.operator_by_key(k) {
                return Err(format!("that key already belongs to operator {}", other.name).into());
            }
        }
        if roles.contains(&Role::Admin) && key.is_none() {
            return Err("an admin needs an Ed25519 key to sign commands".into());
        }
        let roles: BTreeSet<Role> = roles.iter().copied().collect();
        let detail = format!("operator {name} added with roles {roles:?}");
        let operator = Operator { name: name.to_string(), key, ssh_key, roles, pending_max, passkeys: Vec::new() };
        self.operators.insert(name.to_string(), operator);
        self.refresh_admins();
        Ok(detail)
    }

    pub(super) fn remove_operator(&mut self, name: &str) -> Result<String, Refusal> {
        let op = self.operators.get(name).ok_or(format!("no operator named {name}"))?;
        if op.roles.contains(&Role::Admin) && self.admins.len() <= 1 {
            return Err("cannot remove the last admin".into());
        }
        if op.roles.contains(&Role::Admin) && self.admins.len() as u32 <= self.admin_approvals_required {
            return Err(format!(
                "removing {name} would leave fewer admins than the {} the admin policy needs; lower it first",
                self.admin_approvals_required
            )
            .into());
        }
        self.pending_passkeys.retain(|_, p| p.operator != name);
        if self.rules < super::RULES_BOUNDED_CLIENTS {
            self.operators.remove(name);
            self.refresh_admins();
            return Ok(format!("operator {name} removed; its approvals no longer count"));
        }
        // Revocation bites at once: their pending requests fail, and the
        // approvals they gave are dropped (an operator added later under the
        // same name does not inherit them).
        let theirs: Vec<String> = self
            .pending_requests
            .iter()
            .filter(|id| {
                self.requests
                    .get(*id)
                    .is_some_and(|r| self.operator_by_key(&r.requester).is_some_and(|op| op.name == name))
            })
            .cloned()
            .collect();
        for id in &theirs {
            self.fail_request(id, format!("its requester {name} was removed"), &[]);
        }
        let mut dropped = 0;
        for id in self.pending_requests.clone() {
            if let Some(request) = self.requests.get_mut(&id) {
                let before = request.approvals.len();
                request.approvals.retain(|a| a.approver != name);
                dropped += before - request.approvals.len();
            }
        }
        let proposals_before = self.proposals.len();
        if let Some(key) = self.operators.get(name).and_then(|op| op.key) {
            self.proposals.retain(|_, p| p.proposer != key);
        }
        for proposal in self.proposals.values_mut() {
            proposal.approvals.retain(|a| a != name);
        }
        let proposals_dropped = proposals_before - self.proposals.len();
        self.operators.remove(name);
        self.refresh_admins();
        Ok(format!(
            "operator {name} removed: {} of their pending requests failed, {dropped} of their approvals and \
             {proposals_dropped} of their proposals dropped",
            theirs.len()
        ))
    }

    /// Every operator a policy names must exist.
    pub(super) fn check_policy_names(&self, policy: &Policy) -> Result<(), Refusal> {
        if !policy.formats.is_empty() || !policy.namespaces.is_empty() {
            self.needs_rules(super::RULES_SIGN_FORMATS, "a policy that restricts formats or namespaces")?;
        }
        if policy.denials_required.is_some() {
            self.needs_rules(super::RULES_REQUEST_DENY_CANCEL, "a policy that sets denials_required")?;
        }
        for name in
            policy.requesters.iter().chain(&policy.approvers).chain(policy.tiers.iter().flat_map(|t| &t.approvers))
        {
            if !self.operators.contains_key(name) {
                return Err(format!("the policy names {name}, who is not an operator; add them first").into());
            }
        }
        Ok(())
    }

    pub(super) fn set_policy(&mut self, key_name: &str, policy: &Policy) -> Result<String, Refusal> {
        if key_name == synod_proto::authz::AUDIT_KEY_NAME {
            return Err("the audit key's policy is fixed: it signs audit checkpoints only".into());
        }
        let key_id = self.key_names.get(key_name).cloned().ok_or(format!("no key named {key_name:?}"))?;
        self.check_policy_names(policy)?;
        let key = self.keys.get_mut(&key_id).expect("named keys exist");
        key.policy = policy.clone();
        key.policy_version += 1;
        key.policy_unset = false;
        let version = key.policy_version;
        // A policy is the key's: every version of it follows (rules 6 and later).
        let mut ids = self.other_versions(key_name);
        for id in &ids {
            if let Some(other) = self.keys.get_mut(id) {
                other.policy = policy.clone();
                other.policy_version = version;
                other.policy_unset = false;
            }
        }
        ids.push(key_id);
        // Requests approved under the old policy must be approved again.
        let reason = format!("the key's policy changed (now version {version}); request again");
        let failed: usize = ids.iter().map(|id| self.fail_requests_of_key(id, &reason)).sum();
        Ok(format!("policy of key {key_name} is now version {version}; {failed} pending requests failed"))
    }

    /// The statement approvers of `request` sign.
    pub fn approval_statement(&self, request: &RequestRecord) -> Option<ApprovalStatement> {
        let key = self.keys.get(&request.key_id)?;
        Some(ApprovalStatement {
            cluster_id: self.cluster_id.clone()?,
            request_id: request.request_id.clone(),
            requester: request.requester,
            key_id: key.id.clone(),
            key_version: key.version,
            message_sha256: request.message_sha256.clone(),
            purpose: request.purpose.clone(),
            environment: request.environment.clone(),
            attributes: request.attributes.clone(),
            policy_version: request.policy_version,
            expires_at_ms: request.expires_at_ms,
            // Rules 9 and later: a version 2 statement, naming the format (raw
            // when none was declared) and what the node read from the bytes.
            format: (self.rules >= super::RULES_SIGN_FORMATS)
                .then(|| synod_proto::authz::StatementFormat::of(request.format.as_ref())),
        })
    }

    /// Checks one approval's signature against the approver's registered keys;
    /// for a passkey approval, returns the assertion's signature counter.
    pub fn verify_approval(
        &self,
        request: &RequestRecord,
        approver: &str,
        signature: &ApprovalSignature,
    ) -> Result<Option<u32>, String> {
        let statement = self.approval_statement(request).ok_or("the request's key is gone")?;
        self.verify_statement(request, approver, signature, &approval_bytes(&statement), "approval")
    }

    /// Checks one denial's signature: over [`denial_bytes`], never the approval's.
    pub fn verify_denial(
        &self,
        request: &RequestRecord,
        approver: &str,
        signature: &ApprovalSignature,
    ) -> Result<Option<u32>, String> {
        let statement = self.approval_statement(request).ok_or("the request's key is gone")?;
        self.verify_statement(request, approver, signature, &denial_bytes(&statement), "denial")
    }

    /// Checks `signature` over `bytes` (an approval or denial statement, named
    /// `what` in refusals) against `approver`'s registered keys.
    fn verify_statement(
        &self,
        request: &RequestRecord,
        approver: &str,
        signature: &ApprovalSignature,
        bytes: &[u8],
        what: &str,
    ) -> Result<Option<u32>, String> {
        let op = self.operators.get(approver).ok_or(format!("{approver} is not an operator"))?;
        if !op.roles.contains(&Role::Approver) {
            return Err(format!("{approver} does not have the approver role"));
        }
        match signature {
            ApprovalSignature::Ed25519 { signature } => {
                let key = op.key.ok_or(format!("{approver} has no Ed25519 key; sign the {what} with SSH"))?;
                let sig: [u8; 64] = hex::decode(signature)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(format!("the {what} signature is not 64 bytes of hex"))?;
                let verifying = ed25519_dalek::VerifyingKey::from_bytes(&key.0).map_err(|_| "bad approver key")?;
                verifying.verify_strict(bytes, &ed25519_dalek::Signature::from_bytes(&sig)).map_err(|_| {
                    format!(
                        "{what} by {approver} does not verify for request {} (forged, or made for another request, \
                         message, purpose or policy version)",
                        request.request_id
                    )
                })?;
                Ok(None)
            }
            ApprovalSignature::Ssh { armored } => {
                let line = op.ssh_key.as_deref().ok_or(format!("{approver} has no SSH key registered"))?;
                let ssh = SshPublicKey::parse(line).map_err(|e| e.to_string())?;
                synod_proto::sshsig::verify(armored, APPROVAL_SSH_NAMESPACE, bytes, &ssh)
                    .map_err(|e| format!("SSH {what} by {approver} refused: {e}"))?;
                Ok(None)
            }
            ApprovalSignature::WebAuthn { .. } => {
                let assertion = signature.assertion().expect("a passkey approval");
                self.verify_passkey_statement(approver, &assertion, bytes)
                    .map(Some)
                    .map_err(|e| format!("{what} for request {}: {e}", request.request_id))
            }
        }
    }

    /// How a pending request stands against its key's policy. With `reverify`
    /// every counted approval's signature is checked again (the signer's view).
    pub fn policy_progress(&self, request: &RequestRecord, reverify: bool) -> Result<Progress, String> {
        let key = self.keys.get(&request.key_id).ok_or("the request's key is gone")?;
        if key.policy_version != request.policy_version {
            return Err(format!("the key's policy changed since request {} was made", request.request_id));
        }
        // minisign's global signature is authorised by its parent's, not by approvals of its own.
        if let Some(authorised) = self.global_signature_authorised(request) {
            authorised?;
            return Ok(Progress { met: true, summary: Vec::new() });
        }
        let valid: BTreeSet<&str> = request
            .approvals
            .iter()
            .filter(|a| self.operators.get(&a.approver).is_some_and(|op| op.roles.contains(&Role::Approver)))
            .filter(|a| !reverify || self.verify_approval(request, &a.approver, &a.signature).is_ok())
            .map(|a| a.approver.as_str())
            .collect();
        let mut met = true;
        let mut summary = Vec::new();
        for (group, need) in key.policy.requirements(&request.attributes) {
            let have = group.iter().filter(|name| valid.contains(name.as_str())).count() as u32;
            met &= have >= need;
            summary.push(format!("{have}/{need} from [{}]", group.join(", ")));
        }
        Ok(Progress { met, summary })
    }

    /// Whether `request` may be signed now: pending, key active, policy met.
    pub fn ready_to_sign(&self, request: &RequestRecord, reverify: bool) -> Result<(), String> {
        if request.status != RequestStatus::Pending {
            return Err(format!("request {} is no longer pending", request.request_id));
        }
        if request.expires_at_ms < self.time_ms {
            return Err(format!("request {} expired", request.request_id));
        }
        self.still_authorised(request, self.time_ms)?;
        let progress = self.policy_progress(request, reverify)?;
        if !progress.met {
            return Err(format!("request {} lacks approvals: {}", request.request_id, progress.summary.join("; ")));
        }
        Ok(())
    }

    /// Whether the request's requester and its key's policy still allow it at
    /// `now_ms`: checked before every share, not only when it was made, so a
    /// requester removed (or dropped from the policy) and a policy that
    /// expired mid-request release nothing. Checkpoints are the nodes' own.
    pub fn still_authorised(&self, request: &RequestRecord, now_ms: u64) -> Result<(), String> {
        let key = self.keys.get(&request.key_id).ok_or("the request's key is gone")?;
        if key.status != super::KeyStatus::Active && !crate::faults::enabled(crate::faults::SKIP_KEY_STATUS) {
            return Err(format!("{}; request {} is not signed", key.not_signing(), request.request_id));
        }
        let retired = key.retire_at_ms.filter(|at| *at <= now_ms);
        if let Some(at) = retired.filter(|_| !crate::faults::enabled(crate::faults::SKIP_RETIREMENT)) {
            return Err(format!(
                "version {} of key {} retired at {at} ms (its overlap ended); request {} is not signed",
                key.version, key.name, request.request_id
            ));
        }
        if key.name == synod_proto::authz::AUDIT_KEY_NAME {
            return Ok(());
        }
        let id = &request.request_id;
        if key.policy_unset {
            return Err(format!("key {} has no signing policy; request {id} cannot be signed", key.name));
        }
        if let Some(at) = key.policy.expires_at_ms.filter(|at| *at < now_ms) {
            return Err(format!(
                "the policy of key {} expired at {at} ms; request {id} is not signed (an admin must renew the policy)",
                key.name
            ));
        }
        let requester = self
            .operator_by_key(&request.requester)
            .ok_or(format!("the requester of {id} is no longer an operator; their requests are not signed"))?;
        if !requester.roles.contains(&Role::Requester) {
            return Err(format!("{} no longer has the requester role; request {id} is not signed", requester.name));
        }
        if !key.policy.requesters.is_empty() && !key.policy.requesters.contains(&requester.name) {
            return Err(format!(
                "{} is no longer among the requesters of key {}; request {id} is not signed",
                requester.name, key.name
            ));
        }
        Ok(())
    }

    /// Why an approval would be refused, without changing anything.
    pub fn check_approve(
        &self,
        author: &OperatorKey,
        request_id: &str,
        approver: &str,
        signature: &ApprovalSignature,
    ) -> Result<(), String> {
        let request = self.requests.get(request_id).ok_or(format!("no request {request_id}"))?;
        if request.status != RequestStatus::Pending {
            return Err(format!("request {request_id} is no longer pending"));
        }
        if request.expires_at_ms < self.time_ms {
            return Err(format!(
                "request {request_id} expired at {} ms; approvals come too late",
                request.expires_at_ms
            ));
        }
        let requester = self.operator_by_key(&request.requester).map(|op| op.name.as_str());
        if requester == Some(approver) {
            return Err(format!("{approver} requested {request_id} and cannot approve their own request"));
        }
        if request.approvals.iter().any(|a| a.approver == approver) {
            return Err(format!("{approver} already approved request {request_id}; a duplicate counts once"));
        }
        let _ = author; // The approval signature, not the submitter, carries the authority.
        let counter = self.verify_approval(request, approver, signature)?;
        self.check_counter(approver, signature, counter)
    }

    /// A passkey's counter must grow (judged at apply, in log order; a
    /// signer's later re-verification checks only the signature).
    fn check_counter(&self, approver: &str, signature: &ApprovalSignature, counter: Option<u32>) -> Result<(), String> {
        match (counter, signature.assertion()) {
            (Some(counter), Some(a)) => self.check_passkey_counter(approver, &a.credential_id, counter),
            _ => Ok(()),
        }
    }

    /// Records the counter of an applied passkey approval or denial.
    fn note_counter(&mut self, approver: &str, signature: &ApprovalSignature) {
        if let Some(a) = signature.assertion() {
            let counter = synod_proto::webauthn::from_b64url(&a.authenticator_data)
                .ok()
                .and_then(|d| d.get(33..37).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes"))));
            if let Some(counter) = counter {
                self.advance_passkey_counter(approver, &a.credential_id, counter);
            }
        }
    }

    pub(super) fn approve(
        &mut self,
        index: u64,
        author: &OperatorKey,
        request_id: &str,
        approver: &str,
        signature: &ApprovalSignature,
    ) -> Result<String, Refusal> {
        self.check_approve(author, request_id, approver, signature)?;
        self.note_counter(approver, signature);
        let now = self.time_ms;
        let request = self.requests.get_mut(request_id).expect("checked above");
        request.approvals.push(ApprovalRecord {
            approver: approver.to_string(),
            signature: signature.clone(),
            index,
            at_ms: now,
        });
        let request = self.requests.get(request_id).expect("present");
        let progress = self.policy_progress(request, false)?;
        Ok(format!("{approver} approved {request_id}: {}", progress.summary.join("; ")))
    }

    /// Records an approver's signed denial of a pending request; once the
    /// policy's `denials_required` approvers have denied, the request fails
    /// and, like any failed request, no signer releases a share for it.
    pub(super) fn deny(
        &mut self,
        index: u64,
        request_id: &str,
        approver: &str,
        reason: &str,
        signature: &ApprovalSignature,
    ) -> Result<String, Refusal> {
        let request = self.requests.get(request_id).ok_or(format!("no request {request_id}"))?;
        if request.status != RequestStatus::Pending {
            return Err(format!("request {request_id} is no longer pending; there is nothing to deny").into());
        }
        let key = self.keys.get(&request.key_id).ok_or("the request's key is gone")?;
        let policy = &key.policy;
        if !policy.approver_names().contains(approver) {
            return Err(format!(
                "{approver} is not an approver of key {}'s policy and cannot deny request {request_id}",
                key.name
            )
            .into());
        }
        let needed = policy.denials_needed();
        let requester = self.operator_by_key(&request.requester).map(|op| op.name.as_str());
        if requester == Some(approver) {
            return Err(format!("{approver} requested {request_id}; cancel it instead of denying it").into());
        }
        if request.denials.iter().any(|d| d.approver == approver) {
            return Err(format!("{approver} already denied request {request_id}; a duplicate counts once").into());
        }
        if request.approvals.iter().any(|a| a.approver == approver) {
            return Err(format!("{approver} already approved request {request_id} and cannot also deny it").into());
        }
        let counter = self.verify_denial(request, approver, signature)?;
        self.check_counter(approver, signature, counter)?;
        self.note_counter(approver, signature);
        let now = self.time_ms;
        let request = self.requests.get_mut(request_id).expect("checked above");
        request.denials.push(DenialRecord {
            approver: approver.to_string(),
            reason: reason.to_string(),
            signature: signature.clone(),
            index,
            at_ms: now,
        });
        let have = request.denials.len() as u32;
        if have < needed {
            return Ok(format!("{approver} denied {request_id}: {have}/{needed} denials"));
        }
        let why: Vec<String> =
            request.denials.iter().map(|d| format!("denied by {}: {}", d.approver, d.reason)).collect();
        self.fail_request(request_id, why.join("; "), &[]);
        Ok(format!("{approver} denied {request_id}; it failed"))
    }

    /// The requester withdraws their own pending request: it fails.
    pub(super) fn cancel_request(&mut self, author: &OperatorKey, request_id: &str) -> Result<String, Refusal> {
        let request = self.requests.get(request_id).ok_or(format!("no request {request_id}"))?;
        if request.requester != *author {
            return Err(format!("only the requester of {request_id} may cancel it").into());
        }
        if request.status != RequestStatus::Pending {
            return Err(format!("request {request_id} is no longer pending; there is nothing to cancel").into());
        }
        self.fail_request(request_id, "cancelled by its requester".into(), &[]);
        Ok(format!("request {request_id} cancelled"))
    }

    /// An admin command under the admin policy: applied at once when one admin
    /// suffices, otherwise held as a proposal until enough admins agree.
    pub(super) fn propose(
        &mut self,
        id: &str,
        author: OperatorKey,
        command: &Command,
        expires_at_ms: u64,
    ) -> Result<String, Refusal> {
        if self.rules >= super::RULES_BOUNDED_CLIENTS {
            let waiting = self.proposals.values().filter(|p| p.proposer == author).count();
            if waiting >= super::PROPOSALS_PER_ADMIN_MAX {
                return Err(format!(
                    "{waiting} of your proposals are already waiting (at most {}); let them be carried or expire first",
                    super::PROPOSALS_PER_ADMIN_MAX
                )
                .into());
            }
        }
        let name = self.operator_by_key(&author).map(|op| op.name.clone()).unwrap_or_else(|| author.to_hex());
        self.proposals.insert(
            id.to_string(),
            Proposal {
                id: id.to_string(),
                command: command.clone(),
                approvals: vec![name],
                proposer: author,
                expires_at_ms,
            },
        );
        Ok(format!(
            "proposal {id} ({}) needs {} admin approvals (1/{}); approve with `synod admin approve {id}`",
            command.kind(),
            self.admin_approvals_required,
            self.admin_approvals_required
        ))
    }

    /// Records an admin's agreement; returns the proposal when it is now carried.
    pub(super) fn approve_proposal(&mut self, author: &OperatorKey, id: &str) -> Result<Option<Proposal>, Refusal> {
        let name = self.operator_by_key(author).map(|op| op.name.clone()).ok_or("not an operator")?;
        let now = self.time_ms;
        let need = self.admin_approvals_required as usize;
        let proposal = self.proposals.get_mut(id).ok_or(format!("no pending proposal {id}"))?;
        if proposal.expires_at_ms < now {
            self.proposals.remove(id);
            return Err(format!("proposal {id} expired").into());
        }
        if proposal.approvals.contains(&name) {
            return Err(format!("{name} already agreed to proposal {id}").into());
        }
        proposal.approvals.push(name);
        // Only agreements of operators who are still admins count.
        let admins: Vec<&str> =
            self.operators.values().filter(|op| op.roles.contains(&Role::Admin)).map(|op| op.name.as_str()).collect();
        let proposal = self.proposals.get(id).expect("present");
        if proposal.approvals.iter().filter(|a| admins.contains(&a.as_str())).count() >= need {
            return Ok(self.proposals.remove(id));
        }
        Ok(None)
    }

    /// Drops proposals past their expiry.
    pub(super) fn expire_proposals(&mut self) {
        let now = self.time_ms;
        self.proposals.retain(|_, p| p.expires_at_ms >= now);
    }

    /// Names of every operator, for views.
    pub fn operator_names(&self) -> BTreeMap<String, Vec<Role>> {
        self.operators.iter().map(|(n, op)| (n.clone(), op.roles.iter().copied().collect())).collect()
    }
}
