//! This node's part in a key's end of life (`state/lifecycle.rs` has the
//! rules): on the leader, writing the entry that marks a destruction due once
//! its deadline has passed (and the one that starts a scheduled refresh); on
//! every participant of a destroyed key, deleting its sealed shares and
//! reporting that it did; after a refresh, deleting the old generation. Each
//! is retried from the key loop until the log shows it done, so a node that
//! was down or partitioned at the deadline cleans up when it is back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use synod_proto::Command;

use super::Node;
use crate::state::{KeyRecord, KeyStatus};

/// Whether a participant of `key` should hold its share now: the key is
/// generated and not destroyed (a retired version keeps its shares until
/// it is destroyed).
fn holds_a_share(key: &KeyRecord) -> bool {
    matches!(key.status, KeyStatus::Active | KeyStatus::Disabled | KeyStatus::DestroyScheduled | KeyStatus::Retired)
}

/// The least time between two rounds of lifecycle work.
const LIFECYCLE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Node {
    /// Called from the key loop on every node: starts one round of due
    /// lifecycle work unless one is running or started within [`LIFECYCLE_RETRY`].
    pub(super) fn tend_key_lifecycle(self: &Arc<Self>, leader: bool) {
        let (scheduled, mine, unchecked, stale) = {
            let applied = self.shared.read();
            let state = &applied.state;
            let checked = self.shares_checked.lock().expect("shares lock");
            let held = || state.keys.values().filter(|k| holds_a_share(k) && k.participants.contains(&self.id));
            let unchecked: Vec<KeyRecord> =
                held().filter(|k| !checked.contains(&(k.id.clone(), k.generation))).cloned().collect();
            let cleaned = self.generations_cleaned.lock().expect("generations lock");
            let mut stale: Vec<KeyRecord> = held()
                .filter(|k| k.generation > 0 && !cleaned.contains(&(k.id.clone(), k.generation)))
                .cloned()
                .collect();
            // A node a refresh removed deletes its shares of the generations before that refresh.
            for key in state.keys.values().filter(|k| !k.participants.contains(&self.id)) {
                let Some((_, at)) = key.removed_participants.iter().find(|(n, _)| *n == self.id) else { continue };
                if !cleaned.contains(&(key.id.clone(), *at)) {
                    stale.push(KeyRecord { generation: *at, ..key.clone() });
                }
            }
            let scheduled = leader
                && state
                    .keys
                    .values()
                    .any(|k| k.status == KeyStatus::DestroyScheduled || k.refresh_due_at_ms.is_some());
            (scheduled, state.shares_to_destroy(self.id), unchecked, stale)
        };
        // The leader judges a deadline by the time it would stamp on the entry
        // (a majority of clocks), not its own clock, which may be far off.
        let (due, refreshes) = if scheduled {
            let stamp = self.stamp_time_ms();
            let applied = self.shared.read();
            (applied.state.keys_due_for_destruction(stamp), applied.state.refreshes_due(stamp))
        } else {
            (Vec::new(), Vec::new())
        };
        if due.is_empty() && refreshes.is_empty() && mine.is_empty() && unchecked.is_empty() && stale.is_empty() {
            return;
        }
        {
            // Paced by the monotonic clock: a wall clock stepped back must not stall it.
            let now = tokio::time::Instant::now();
            let mut last = self.lifecycle_last.lock().expect("lifecycle lock");
            if last.is_some_and(|at| now.duration_since(at) < LIFECYCLE_RETRY) {
                return;
            }
            *last = Some(now);
        }
        if self.lifecycle_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(?due, ?mine, unchecked = unchecked.len(), "key lifecycle work");
        let node = self.clone();
        tokio::spawn(async move {
            for key_id in due {
                if let Err(e) = node.write_as_node(Command::KeyDestroyDue { node_id: node.id, key_id }).await {
                    tracing::info!(error = %e, "key destruction not yet marked; will retry");
                }
            }
            for key_id in refreshes {
                if let Err(e) = node.write_as_node(Command::RefreshDue { node_id: node.id, key_id }).await {
                    tracing::info!(error = %e, "scheduled refresh not yet started; will retry");
                }
            }
            for key in stale {
                if let Err(e) = node.delete_old_generations(&key).await {
                    tracing::warn!(key = %key.name, error = %e, "could not delete old generations of this node's share; will retry");
                }
            }
            for key in unchecked {
                if let Err(e) = node.check_own_share(&key).await {
                    tracing::warn!(key = %key.name, error = %e, "could not check or report this node's share; will retry");
                }
            }
            for key_id in mine {
                if let Err(e) = node.destroy_own_shares(&key_id).await {
                    tracing::warn!(key_id, error = %e, "could not delete this node's shares of a destroyed key; will retry");
                }
            }
            node.lifecycle_busy.store(false, Ordering::Release);
        });
    }

    /// Whether this node holds its sealed share of `key` (once per key and
    /// generation per boot, without unsealing it). A missing share is reported through the
    /// log (audited, shown with the key) and in health and status.
    async fn check_own_share(&self, key: &KeyRecord) -> Result<(), String> {
        let cluster_id = self.shared.read().state.cluster_id.clone().ok_or("the cluster is not initialised")?;
        let ctx = crate::signer::key_package_context(cluster_id, self.id, key);
        let sealed = self.sealed.clone();
        // A newer generation counts: right after a restart the state may lag the disk.
        let current = key.generation;
        let present = crate::seams::run_blocking(move || sealed.generations(&ctx))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .iter()
            .any(|g| *g >= current);
        if !present {
            if self.shares_missing.lock().expect("shares lock").insert(key.id.clone()) {
                tracing::error!(
                    key = %key.name,
                    key_id = %key.id,
                    "this node holds no share of a key it is a participant of (its data directory lost it); the \
                     others still sign while enough of them hold theirs"
                );
            }
            let reported =
                self.shared.read().state.keys.get(&key.id).is_some_and(|k| k.shares_missing.contains(&self.id));
            if !reported {
                let report = Command::ShareMissing { node_id: self.id, key_id: key.id.clone() };
                self.write_as_node(report).await.map_err(|e| e.to_string())?;
            }
        }
        self.shares_checked.lock().expect("shares lock").insert((key.id.clone(), key.generation));
        Ok(())
    }

    /// Deletes this node's sealed shares of every generation of `key` older
    /// than `key.generation` (once per key and generation per boot): after a
    /// refresh, the old share; after a refresh that removed this node, every
    /// share it held. Old shares still combine with each other, so a
    /// refresh revokes only what is deleted. The new share a node sealed for a
    /// refresh that was then aborted stays until a later refresh of the same
    /// generation number replaces it: a state that lags the disk (replaying
    /// the log after a restart) cannot tell an aborted attempt from a later
    /// one that completed, so newer generations are never deleted.
    async fn delete_old_generations(&self, key: &KeyRecord) -> Result<(), String> {
        let cluster_id = self.shared.read().state.cluster_id.clone().ok_or("the cluster is not initialised")?;
        let ctx = crate::signer::key_package_context(cluster_id, self.id, key);
        let sealed = self.sealed.clone();
        let removed = crate::seams::run_blocking(move || sealed.remove_older_generations(&ctx))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !removed.is_empty() {
            self.signer.forget_finished();
            tracing::info!(key = %key.name, generation = key.generation, ?removed, "deleted this node's shares of old generations");
        }
        self.generations_cleaned.lock().expect("generations lock").insert((key.id.clone(), key.generation));
        Ok(())
    }

    /// Names of the keys this node found its share of missing (this boot).
    pub(super) fn missing_share_names(&self) -> Vec<String> {
        let missing = self.shares_missing.lock().expect("shares lock").clone();
        let applied = self.shared.read();
        missing
            .iter()
            .filter_map(|id| applied.state.keys.get(id))
            .filter(|k| holds_a_share(k))
            .map(|k| k.name.clone())
            .collect()
    }

    /// Deletes every sealed secret of the destroyed key `key_id` on this node,
    /// drops the signer's copy, and reports it through the log.
    async fn destroy_own_shares(&self, key_id: &str) -> Result<(), String> {
        let cluster_id = self.shared.read().state.cluster_id.clone().ok_or("the cluster is not initialised")?;
        let sealed = self.sealed.clone();
        let (id, node) = (key_id.to_string(), self.id);
        let removed = crate::seams::run_blocking(move || sealed.remove_key(&cluster_id, node, &id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.signer.forget_finished();
        tracing::info!(key_id, removed, "deleted this node's sealed shares of a destroyed key");
        self.write_as_node(Command::KeySharesDestroyed { node_id: self.id, key_id: key_id.to_string() })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
