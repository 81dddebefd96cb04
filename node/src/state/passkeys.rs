//! Passkeys and webhooks in the replicated state (rules 11, [`RULES_PASSKEYS`]).
//!
//! The relying party (RP ID and origins) is set by an admin command, so every
//! node judges an assertion by the same settings. A passkey enters through a
//! node-authored `RegisterPasskey` (the console that served the person) which
//! every node reads itself, waits as pending, and counts only once the admin
//! quorum approves it, like adding an SSH key. An approval or denial made
//! with it is a WebAuthn assertion over SHA-256 of the statement, verified by
//! every node at apply and again by every signer before it releases a share;
//! its signature counter must grow at apply, when the authenticator keeps one.

use serde::{Deserialize, Serialize};
use synod_proto::authz::ApprovalSignature;
use synod_proto::webauthn::{
    self, Assertion, CoseKey, Registration, WebAuthnConfig, PASSKEYS_PER_OPERATOR_MAX, PENDING_PASSKEYS_MAX,
    PENDING_PASSKEYS_PER_OPERATOR_MAX, PENDING_PASSKEY_MS,
};
use synod_proto::webhook::{Webhook, WEBHOOKS_MAX};
use synod_proto::NodeId;

use super::{ClusterState, Refusal, RULES_PASSKEYS};

/// An approved passkey of an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Passkey {
    /// base64url, as browsers name it.
    pub credential_id: String,
    /// The COSE public key, base64url.
    pub public_key: String,
    /// COSE algorithm: -7 (ES256) or -8 (EdDSA).
    pub algorithm: i64,
    #[serde(default)]
    pub label: String,
    /// `SHA256:…` over the COSE key, what the admins approved.
    pub fingerprint: String,
    /// The highest signature counter an applied approval or denial carried
    /// (0 while the authenticator keeps none).
    pub counter: u32,
    pub added_at_ms: u64,
}

/// A registration waiting for the admins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingPasskey {
    pub operator: String,
    pub credential_id: String,
    pub public_key: String,
    pub algorithm: i64,
    #[serde(default)]
    pub label: String,
    pub fingerprint: String,
    pub counter: u32,
    /// The node whose console the person used.
    pub node_id: NodeId,
    pub registered_at_ms: u64,
    /// After this (log time) it can no longer be approved.
    pub expires_at_ms: u64,
}

impl ClusterState {
    /// The approved passkey `credential_id` of `operator`.
    pub fn passkey_for(&self, operator: &str, credential_id: &str) -> Option<&Passkey> {
        let id = normalise(credential_id);
        self.operators.get(operator)?.passkeys.iter().find(|p| p.credential_id == id)
    }

    pub(super) fn set_webauthn(&mut self, config: &WebAuthnConfig) -> Result<String, Refusal> {
        self.needs_rules(RULES_PASSKEYS, "passkeys")?;
        config.validate().map_err(|e| e.0)?;
        let changed = self.webauthn.as_ref().is_some_and(|old| old.rp_id != config.rp_id);
        self.webauthn = Some(config.clone());
        let mut detail = format!("passkeys: RP ID {}, origins {}", config.rp_id, config.origins.join(", "));
        if changed {
            // Passkeys are bound to their RP ID: none made for the old one can sign for the new.
            let mut dropped = 0;
            for op in self.operators.values_mut() {
                dropped += op.passkeys.len();
                op.passkeys.clear();
            }
            dropped += self.pending_passkeys.len();
            self.pending_passkeys.clear();
            detail.push_str(&format!("; the RP ID changed, so {dropped} passkeys made for the old one were removed"));
        }
        let stale = self.drop_unverifiable_passkey_approvals();
        if stale > 0 {
            detail.push_str(&format!(
                "; {stale} passkey approvals of pending requests no longer verify and were dropped"
            ));
        }
        Ok(detail)
    }

    fn config(&self) -> Result<&WebAuthnConfig, String> {
        self.webauthn.as_ref().ok_or_else(|| {
            "passkeys are not set up in this cluster; an admin runs `synod cluster webauthn set` first".into()
        })
    }

    /// Why a registration would be refused, without changing anything: what
    /// every node checks when it applies one, and what a console checks before
    /// it writes one (so a refused registration costs no log entry).
    pub fn check_register_passkey(
        &self,
        operator: &str,
        registration: &Registration,
    ) -> Result<webauthn::NewCredential, String> {
        if self.rules < RULES_PASSKEYS {
            return Err(format!(
                "passkeys need rules version {RULES_PASSKEYS}; this cluster's genesis named {}",
                self.rules
            ));
        }
        let now = self.time_ms;
        let config = self.config()?;
        let credential = webauthn::read_registration(config, registration, None)
            .map_err(|e| format!("the passkey registration for {operator} is refused: {e}"))?;
        let op = self.operators.get(operator).ok_or(format!("no operator named {operator}"))?;
        let pending = || self.pending_passkeys.values().filter(|p| p.expires_at_ms >= now);
        // One key is one person's: the same public key under another credential id (or
        // another operator) would let one touch count as two approvers.
        let known = self
            .operators
            .values()
            .flat_map(|o| &o.passkeys)
            .map(|p| (&p.credential_id, &p.fingerprint))
            .chain(pending().map(|p| (&p.credential_id, &p.fingerprint)))
            .any(|(id, fingerprint)| *id == credential.credential_id || *fingerprint == credential.fingerprint);
        if known {
            return Err(format!("passkey {} is already registered", credential.fingerprint));
        }
        if op.passkeys.len() >= PASSKEYS_PER_OPERATOR_MAX {
            return Err(format!(
                "{operator} already has {PASSKEYS_PER_OPERATOR_MAX} passkeys; an admin removes one first"
            ));
        }
        let theirs = pending().filter(|p| p.operator == operator).count();
        let all = pending().count();
        if theirs >= PENDING_PASSKEYS_PER_OPERATOR_MAX || all >= PENDING_PASSKEYS_MAX {
            return Err(format!(
                "too many passkeys wait for the admins ({theirs} for {operator}, {all} in all); an admin approves or \
                 removes them (`synod operator passkey list`)"
            ));
        }
        Ok(credential)
    }

    pub(super) fn register_passkey(
        &mut self,
        node_id: NodeId,
        operator: &str,
        label: &str,
        registration: &Registration,
    ) -> Result<String, Refusal> {
        self.needs_rules(RULES_PASSKEYS, "passkeys")?;
        let now = self.time_ms;
        self.pending_passkeys.retain(|_, p| p.expires_at_ms >= now);
        let credential = self.check_register_passkey(operator, registration)?;
        let detail = format!(
            "passkey {} ({}) registered for {operator} on node {node_id}; it waits for the admins",
            credential.fingerprint,
            algorithm_name(credential.algorithm)
        );
        self.pending_passkeys.insert(
            credential.credential_id.clone(),
            PendingPasskey {
                operator: operator.to_string(),
                credential_id: credential.credential_id,
                public_key: credential.public_key,
                algorithm: credential.algorithm,
                label: label.to_string(),
                fingerprint: credential.fingerprint,
                counter: credential.counter,
                node_id,
                registered_at_ms: now,
                expires_at_ms: now + PENDING_PASSKEY_MS,
            },
        );
        Ok(detail)
    }

    pub(super) fn approve_passkey(
        &mut self,
        operator: &str,
        credential_id: &str,
        fingerprint: &str,
    ) -> Result<String, Refusal> {
        self.needs_rules(RULES_PASSKEYS, "passkeys")?;
        let id = normalise(credential_id);
        let pending = self.pending_passkeys.get(&id).ok_or(format!("no passkey {credential_id} waits for approval"))?;
        if pending.operator != operator {
            return Err(
                format!("passkey {credential_id} was registered for {}, not {operator}", pending.operator).into()
            );
        }
        // The admins approve the key whose fingerprint they checked with its owner, not
        // whatever key waits under that credential id when their agreement completes.
        if pending.fingerprint != fingerprint.trim_end_matches('=') {
            return Err(format!(
                "passkey {credential_id} of {operator} has fingerprint {}, not the {fingerprint} the admins approved; \
                 check the fingerprint with its owner again",
                pending.fingerprint
            )
            .into());
        }
        if pending.expires_at_ms < self.time_ms {
            return Err(format!(
                "passkey {} waited more than 24 h and expired; register it again",
                pending.fingerprint
            )
            .into());
        }
        let op = self.operators.get_mut(operator).ok_or(format!("no operator named {operator}"))?;
        if op.passkeys.len() >= PASSKEYS_PER_OPERATOR_MAX {
            return Err(format!("{operator} already has {PASSKEYS_PER_OPERATOR_MAX} passkeys; remove one first").into());
        }
        let pending = self.pending_passkeys.remove(&id).expect("found above");
        let detail = format!("passkey {} of {operator} approved", pending.fingerprint);
        op.passkeys.push(Passkey {
            credential_id: pending.credential_id,
            public_key: pending.public_key,
            algorithm: pending.algorithm,
            label: pending.label,
            fingerprint: pending.fingerprint,
            counter: pending.counter,
            added_at_ms: self.time_ms,
        });
        Ok(detail)
    }

    pub(super) fn remove_passkey(&mut self, operator: &str, credential_id: &str) -> Result<String, Refusal> {
        self.needs_rules(RULES_PASSKEYS, "passkeys")?;
        let id = normalise(credential_id);
        if self.pending_passkeys.get(&id).is_some_and(|p| p.operator == operator) {
            let p = self.pending_passkeys.remove(&id).expect("present");
            return Ok(format!("pending passkey {} of {operator} removed", p.fingerprint));
        }
        let op = self.operators.get_mut(operator).ok_or(format!("no operator named {operator}"))?;
        let at = op
            .passkeys
            .iter()
            .position(|p| p.credential_id == id)
            .ok_or(format!("{operator} has no passkey {credential_id}"))?;
        let removed = op.passkeys.remove(at);
        let dropped = self.drop_unverifiable_passkey_approvals();
        Ok(format!(
            "passkey {} of {operator} removed; {dropped} approvals it made to pending requests were dropped",
            removed.fingerprint
        ))
    }

    /// Drops from pending requests every passkey approval that no longer
    /// verifies (its passkey was removed, or its origin or RP ID left the
    /// relying party) and returns how many. Signers verify approvals again
    /// before each share anyway; dropping them here keeps what the request
    /// shows, what the leader coordinates and what signers accept the same,
    /// so such a request waits for new approvals instead of failing at the
    /// signers. Costs one verification per passkey approval of a pending
    /// request, on an admin command.
    fn drop_unverifiable_passkey_approvals(&mut self) -> usize {
        let mut stale = Vec::new();
        for id in &self.pending_requests {
            let Some(request) = self.requests.get(id) else { continue };
            for approval in &request.approvals {
                let passkey = matches!(approval.signature, ApprovalSignature::WebAuthn { .. });
                if passkey && self.verify_approval(request, &approval.approver, &approval.signature).is_err() {
                    stale.push((id.clone(), approval.approver.clone()));
                }
            }
        }
        for (id, approver) in &stale {
            if let Some(request) = self.requests.get_mut(id) {
                request.approvals.retain(|a| &a.approver != approver);
            }
        }
        stale.len()
    }

    /// Verifies a passkey approval or denial of `approver` over `statement`
    /// and returns its signature counter (user verification required).
    pub(super) fn verify_passkey_statement(
        &self,
        approver: &str,
        assertion: &Assertion,
        statement: &[u8],
    ) -> Result<u32, String> {
        let config = self.config()?;
        let passkey = self.passkey_for(approver, &assertion.credential_id).ok_or(format!(
            "{approver} has no approved passkey {}; register it in the console and have the admins approve it",
            assertion.credential_id
        ))?;
        let key_bytes = webauthn::from_b64url(&passkey.public_key).map_err(|e| e.0)?;
        let key = CoseKey::from_cose(&key_bytes).map_err(|e| e.0)?;
        let challenge = webauthn::statement_challenge(statement);
        let facts = webauthn::verify_assertion(config, &key, assertion, &challenge, true)
            .map_err(|e| format!("the passkey assertion of {approver} is refused: {e}"))?;
        Ok(facts.counter)
    }

    /// A counter must grow when either side keeps one (WebAuthn §7.2 step 21):
    /// a counter that stands still or goes back means a cloned authenticator
    /// or a replayed assertion.
    pub(super) fn check_passkey_counter(
        &self,
        approver: &str,
        credential_id: &str,
        counter: u32,
    ) -> Result<(), String> {
        let passkey = self.passkey_for(approver, credential_id).ok_or(format!("{approver} has no such passkey"))?;
        if crate::faults::enabled(crate::faults::PASSKEY_IGNORES_COUNTER) {
            return Ok(());
        }
        if (counter != 0 || passkey.counter != 0) && counter <= passkey.counter {
            return Err(format!(
                "the passkey {} of {approver} signed with counter {counter}, not above the {} the cluster already \
                 took from it: a replayed assertion, a cloned authenticator, or two approvals made at once that \
                 arrived out of order (approve again); if none of these, remove the passkey",
                passkey.fingerprint, passkey.counter
            ));
        }
        Ok(())
    }

    pub(super) fn advance_passkey_counter(&mut self, approver: &str, credential_id: &str, counter: u32) {
        let id = normalise(credential_id);
        if let Some(p) =
            self.operators.get_mut(approver).and_then(|op| op.passkeys.iter_mut().find(|p| p.credential_id == id))
        {
            p.counter = p.counter.max(counter);
        }
    }

    pub(super) fn set_webhook(&mut self, webhook: &Webhook) -> Result<String, Refusal> {
        self.needs_rules(RULES_PASSKEYS, "webhooks")?;
        if !self.webhooks.contains_key(&webhook.name) && self.webhooks.len() >= WEBHOOKS_MAX {
            return Err(format!("the cluster has {WEBHOOKS_MAX} webhooks; remove one first").into());
        }
        let replaced = self.webhooks.insert(webhook.name.clone(), webhook.clone()).is_some();
        Ok(format!(
            "webhook {} {} ({})",
            webhook.name,
            if replaced { "replaced" } else { "added" },
            webhook.redacted_url()
        ))
    }

    pub(super) fn remove_webhook(&mut self, name: &str) -> Result<String, Refusal> {
        self.needs_rules(RULES_PASSKEYS, "webhooks")?;
        self.webhooks.remove(name).ok_or(format!("no webhook named {name}"))?;
        Ok(format!("webhook {name} removed"))
    }
}

/// Credential ids compare in their unpadded form.
fn normalise(credential_id: &str) -> String {
    credential_id.trim_end_matches('=').to_string()
}

/// "ES256" or "Ed25519".
pub fn algorithm_name(algorithm: i64) -> &'static str {
    match algorithm {
        webauthn::COSE_ES256 => "ES256",
        webauthn::COSE_EDDSA => "Ed25519",
        _ => "unknown",
    }
}
