//! A key's service life after activation (rules 5 and later): disable and
//! enable, destruction scheduled after a waiting period (cancellable until
//! its deadline), the deadline itself, and the participants' reports that
//! they deleted their shares.
//!
//! ```text
//!            disable                 destroy --after W          deadline (log time)
//!   active ─────────► disabled ─────────────────► destroy_scheduled ─────────► destroyed
//!     ▲ ◄───────────── │ ◄──────────────────────────── │
//!        enable            destroy --cancel (stays disabled)
//! ```
//!
//! Each command names the key and acts on all its versions (rules 6 and
//! later): a version a rotation replaced follows the primary (a retired one
//! is destroyed with it), and a rotation still generating is aborted by a
//! disable or a destruction.
//!
//! An active key can also be scheduled directly. Taking a key out of service
//! fails its pending requests at once (so they release no share and hold no
//! requester's quota), and every signer refuses a key that is not active in
//! its own state. Scheduling refuses use at once, as AWS KMS's pending
//! deletion does: a team that still depends on the key finds out while the
//! destruction can still be cancelled. Cancelling leaves the key disabled, so
//! putting it back in service is a separate, deliberate `enable`.
//!
//! The deadline is judged by the log's time, which moves only with entries,
//! so the leader writes a node-authored [`Command::KeyDestroyDue`] once its
//! clock has passed it; every node refuses one that comes early by the log's
//! time (bounded by a majority of clocks). A destroyed key's name and id are
//! never used again; its public key, requests and audit records stay.
//! Participants delete their sealed shares when they apply the destruction
//! (or at their next start) and report it with
//! [`Command::KeySharesDestroyed`]; those reports track clean-up, and a dead
//! member does not hold the destruction open.
//!
//! [`Command::KeyDestroyDue`]: synod_proto::Command::KeyDestroyDue
//! [`Command::KeySharesDestroyed`]: synod_proto::Command::KeySharesDestroyed

use synod_proto::command::KEY_DESTROY_WAIT_MIN_MS_DEFAULT;
use synod_proto::NodeId;

use super::{ClusterState, KeyRecord, KeyStatus, Refusal};

/// The first rules version with disable, enable and scheduled destruction.
pub const RULES_KEY_LIFECYCLE: u32 = 5;

impl ClusterState {
    /// The shortest destruction waiting period this cluster allows: fixed at genesis.
    pub fn key_destroy_wait_min(&self) -> u64 {
        self.key_destroy_wait_min_ms.unwrap_or(KEY_DESTROY_WAIT_MIN_MS_DEFAULT)
    }

    /// The key named `name` for a lifecycle command, if these rules have them.
    fn lifecycle_key(&mut self, name: &str, what: &str) -> Result<&mut KeyRecord, Refusal> {
        self.needs_rules(RULES_KEY_LIFECYCLE, what)?;
        if name == synod_proto::authz::AUDIT_KEY_NAME {
            return Err(format!("the audit key signs the audit chain's checkpoints; it cannot be {what}d").into());
        }
        let id = self.key_names.get(name).cloned().ok_or(format!("no key named {name:?}"))?;
        self.keys.get_mut(&id).ok_or_else(|| format!("no key named {name:?}").into())
    }

    /// Carries a service change of `name`'s primary to its other versions
    /// (rules 6 and later): `change` updates one version's record and says
    /// whether it changed. With `out_of_service` (why), each changed version's
    /// pending requests fail and a rotation still generating is aborted.
    /// Returns how many requests failed.
    fn carry_to_versions(
        &mut self,
        index: u64,
        name: &str,
        out_of_service: Option<&str>,
        mut change: impl FnMut(&mut KeyRecord) -> bool,
    ) -> usize {
        let mut failed = 0;
        for id in self.other_versions(name) {
            let Some(key) = self.keys.get_mut(&id) else { continue };
            if key.status == KeyStatus::Generating {
                if let Some(why) = out_of_service {
                    self.abort(&id, format!("rotation stopped: {why}"), None);
                }
                continue;
            }
            if !change(key) {
                continue;
            }
            key.status_index = index;
            if let Some(why) = out_of_service {
                failed += self.fail_requests_out_of_service(&id, why);
            }
        }
        failed
    }

    /// Fails every pending request of a key taken out of service, saying why.
    fn fail_requests_out_of_service(&mut self, key_id: &str, reason: &str) -> usize {
        if crate::faults::enabled(crate::faults::SKIP_KEY_STATUS) {
            return 0;
        }
        self.fail_requests_of_key(key_id, reason)
    }

    pub(super) fn disable_key(&mut self, index: u64, name: &str) -> Result<String, Refusal> {
        let key = self.lifecycle_key(name, "disable")?;
        match key.status {
            KeyStatus::Active => {}
            KeyStatus::Disabled => return Ok(format!("key {name} is already disabled")),
            ref other => {
                return Err(format!("key {name} is {}; only an active key can be disabled", word(other)).into())
            }
        }
        key.status = KeyStatus::Disabled;
        key.status_index = index;
        let id = key.id.clone();
        let why = format!("its key {name} was disabled by an admin");
        let mut failed = self.fail_requests_out_of_service(&id, &why);
        failed += self.carry_to_versions(index, name, Some(&why), |key| {
            (key.status == KeyStatus::Active).then(|| key.status = KeyStatus::Disabled).is_some()
        });
        Ok(format!("key {name} disabled; {failed} pending requests failed"))
    }

    pub(super) fn enable_key(&mut self, index: u64, name: &str) -> Result<String, Refusal> {
        let key = self.lifecycle_key(name, "enable")?;
        match key.status {
            KeyStatus::Disabled => {}
            KeyStatus::Active => return Ok(format!("key {name} is already active")),
            KeyStatus::DestroyScheduled => {
                return Err(format!(
                "key {name} is scheduled for destruction; cancel that first with `synod key destroy {name} --cancel`"
            )
                .into())
            }
            ref other => {
                return Err(format!("key {name} is {}; only a disabled key can be enabled", word(other)).into())
            }
        }
        key.status = KeyStatus::Active;
        key.status_index = index;
        self.carry_to_versions(index, name, None, |key| {
            (key.status == KeyStatus::Disabled).then(|| key.status = KeyStatus::Active).is_some()
        });
        // A version whose overlap ended while it was disabled stays retired.
        self.retire_versions(index);
        Ok(format!("key {name} enabled"))
    }

    pub(super) fn schedule_key_destroy(&mut self, index: u64, name: &str, wait_ms: u64) -> Result<String, Refusal> {
        let min = self.key_destroy_wait_min();
        let now = self.time_ms;
        if wait_ms < min {
            return Err(format!(
                "a destruction needs a waiting period of at least {} (fixed at this cluster's genesis), not {}",
                duration_words(min),
                duration_words(wait_ms)
            )
            .into());
        }
        let key = self.lifecycle_key(name, "destroy")?;
        match key.status {
            KeyStatus::Active | KeyStatus::Disabled => {}
            KeyStatus::DestroyScheduled => {
                return Err(format!(
                    "key {name} is already scheduled for destruction at {} ms; cancel it first to choose another time",
                    key.destroy_at_ms.unwrap_or_default()
                )
                .into())
            }
            ref other => {
                return Err(format!("key {name} is {}; it cannot be scheduled for destruction", word(other)).into())
            }
        }
        let at = now.saturating_add(wait_ms);
        key.status = KeyStatus::DestroyScheduled;
        key.status_index = index;
        key.destroy_at_ms = Some(at);
        let id = key.id.clone();
        let why = format!("its key {name} is scheduled for destruction");
        let mut failed = self.fail_requests_out_of_service(&id, &why);
        failed += self.carry_to_versions(index, name, Some(&why), |key| {
            let scheduled = matches!(key.status, KeyStatus::Active | KeyStatus::Disabled | KeyStatus::Retired);
            if scheduled {
                key.status = KeyStatus::DestroyScheduled;
                key.destroy_at_ms = Some(at);
            }
            scheduled
        });
        Ok(format!(
            "key {name} scheduled for destruction at {at} ms (in {}); it signs nothing from now on; {failed} pending \
             requests failed",
            duration_words(wait_ms)
        ))
    }

    pub(super) fn cancel_key_destroy(&mut self, index: u64, name: &str) -> Result<String, Refusal> {
        let key = self.lifecycle_key(name, "destroy")?;
        if key.status != KeyStatus::DestroyScheduled {
            return Err(format!("key {name} is {}; there is no destruction to cancel", word(&key.status)).into());
        }
        key.status = KeyStatus::Disabled;
        key.status_index = index;
        key.destroy_at_ms = None;
        self.carry_to_versions(index, name, None, |key| {
            let cancelled = key.status == KeyStatus::DestroyScheduled;
            if cancelled {
                key.status = KeyStatus::Disabled;
                key.destroy_at_ms = None;
            }
            cancelled
        });
        // A version whose overlap ended meanwhile is retired again, not disabled.
        self.retire_versions(index);
        Ok(format!("destruction of key {name} cancelled; it stays disabled until `synod key enable {name}`"))
    }

    pub(super) fn key_destroy_due(&mut self, index: u64, key_id: &str) -> Result<String, Refusal> {
        let now = self.time_ms;
        let key = self.keys.get_mut(key_id).ok_or(format!("no key with id {key_id}"))?;
        let name = key.name.clone();
        match (&key.status, key.destroy_at_ms) {
            (KeyStatus::DestroyScheduled, Some(at)) if at <= now => {}
            (KeyStatus::DestroyScheduled, Some(at)) => {
                return Err(format!("key {name}'s destruction is due at {at} ms; the log's time is {now} ms").into())
            }
            (other, _) => return Err(format!("key {name} is {}, not scheduled for destruction", word(other)).into()),
        }
        key.status = KeyStatus::Destroyed;
        key.status_index = index;
        Ok(format!("key {name} destroyed; its {} participants delete their shares", key.participants.len()))
    }

    pub(super) fn key_shares_destroyed(&mut self, key_id: &str, node: NodeId) -> Result<String, Refusal> {
        let key = self.keys.get_mut(key_id).ok_or(format!("no key with id {key_id}"))?;
        if key.status != KeyStatus::Destroyed {
            return Err(format!("key {} is {}, not destroyed", key.name, word(&key.status)).into());
        }
        if !key.is_participant(node) {
            return Err(format!("node {node} is not a participant of key {}", key.name).into());
        }
        if key.shares_destroyed.contains(&node) {
            return Err(format!("node {node} already reported its shares of key {} deleted", key.name).into());
        }
        key.shares_destroyed.push(node);
        key.shares_destroyed.sort_unstable();
        Ok(format!(
            "node {node} deleted its shares of key {} ({}/{})",
            key.name,
            key.shares_destroyed.len(),
            key.participants.len()
        ))
    }

    pub(super) fn share_missing(&mut self, key_id: &str, node: NodeId) -> Result<String, Refusal> {
        let key = self.keys.get_mut(key_id).ok_or(format!("no key with id {key_id}"))?;
        if !key.is_participant(node) {
            return Err(format!("node {node} is not a participant of key {}", key.name).into());
        }
        if key.shares_missing.contains(&node) {
            return Ok(format!("node {node} still holds no share of key {}", key.name));
        }
        key.shares_missing.push(node);
        key.shares_missing.sort_unstable();
        let (have, t) = (key.participants.len() - key.shares_missing.len(), key.threshold);
        Ok(format!(
            "node {node} holds no share of key {} (its disk lost it); {have} participants still hold shares and {t} \
             are needed to sign",
            key.name
        ))
    }

    /// Keys whose destruction deadline has passed by `now_ms` and which the
    /// log has not yet marked destroyed: what a leader writes
    /// [`synod_proto::Command::KeyDestroyDue`] for.
    pub fn keys_due_for_destruction(&self, now_ms: u64) -> Vec<String> {
        self.keys
            .values()
            .filter(|k| k.status == KeyStatus::DestroyScheduled && k.destroy_at_ms.is_some_and(|at| at <= now_ms))
            .map(|k| k.id.clone())
            .collect()
    }

    /// Destroyed keys `node` holds shares of and has not reported deleted.
    pub fn shares_to_destroy(&self, node: NodeId) -> Vec<String> {
        self.keys
            .values()
            .filter(|k| {
                k.status == KeyStatus::Destroyed && k.is_participant(node) && !k.shares_destroyed.contains(&node)
            })
            .map(|k| k.id.clone())
            .collect()
    }
}

/// The API word for a key status, for refusals.
fn word(status: &KeyStatus) -> String {
    status.api().to_string()
}

/// A duration in ms as the largest whole unit that fits ("30 days", "1 minute").
pub fn duration_words(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute"), (1_000, "second")];
    for (unit, name) in UNITS {
        if ms >= unit && ms.is_multiple_of(unit) {
            let n = ms / unit;
            return format!("{n} {name}{}", if n == 1 { "" } else { "s" });
        }
    }
    format!("{ms} ms")
}
