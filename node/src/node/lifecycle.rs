//! This node's part in a key's end of life (`state/lifecycle.rs` has the
//! rules): on the leader, writing the entry that marks a destruction due once
//! its deadline has passed; on every participant of a destroyed key, deleting
//! its sealed shares and reporting that it did. Both are retried from the key
//! loop until the log shows them done, so a node that was down or partitioned
//! at the deadline cleans up when it is back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use synod_proto::Command;

use super::Node;

/// The least time between two rounds of lifecycle work.
const LIFECYCLE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Node {
    /// Called from the key loop on every node: starts one round of due
    /// lifecycle work unless one is running or started within [`LIFECYCLE_RETRY`].
    pub(super) fn tend_key_lifecycle(self: &Arc<Self>, leader: bool) {
        // The leader judges a deadline by the time it would stamp on the entry
        // (a majority of clocks), not its own clock, which may be far off.
        let due = if leader {
            let stamp = self.stamp_time_ms();
            self.shared.read().state.keys_due_for_destruction(stamp)
        } else {
            Vec::new()
        };
        let mine = self.shared.read().state.shares_to_destroy(self.id);
        if due.is_empty() && mine.is_empty() {
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
        tracing::info!(?due, ?mine, "key lifecycle work: destructions due, own shares to delete");
        let node = self.clone();
        tokio::spawn(async move {
            for key_id in due {
                if let Err(e) = node.write_as_node(Command::KeyDestroyDue { node_id: node.id, key_id }).await {
                    tracing::info!(error = %e, "key destruction not yet marked; will retry");
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
