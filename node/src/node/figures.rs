//! The node's figures in its metrics ([`crate::metrics`]): the gauges that mirror its state,
//! set at each scrape, and the task that counts leader changes and drains the histograms.

use std::sync::Weak;

use synod_proto::api::RaftRole;

use super::Node;

impl Node {
    /// This node's metrics in Prometheus's text format: its state as it is now, and
    /// everything recorded since it started.
    pub async fn render_metrics(&self) -> String {
        let answering = self.peers_answering().await;
        let metrics = &self.metrics;
        let s = self.status();
        let set = |name: &'static str, value: f64| metrics.gauge(name, &[]).set(value);
        set("synod_raft_term", s.term as f64);
        set("synod_raft_is_leader", f64::from(u8::from(s.role == RaftRole::Leader)));
        set("synod_raft_has_leader", f64::from(u8::from(s.leader_id.is_some())));
        set("synod_raft_last_log_index", s.last_log_index.unwrap_or(0) as f64);
        set("synod_raft_last_applied_index", s.last_applied_index.unwrap_or(0) as f64);
        set("synod_raft_snapshot_index", s.snapshot_index.unwrap_or(0) as f64);
        set("synod_raft_members", s.members.len() as f64);
        set("synod_signer_nonce_slots", self.signer.open_slots() as f64);
        let (pending, awaiting) = self.open_requests();
        set("synod_requests_pending", pending as f64);
        set("synod_requests_awaiting_approval", awaiting as f64);
        let last = s.last_log_index.unwrap_or(0);
        for member in &s.members {
            // Every member's culprit count exists from the start, at zero, so a query of its
            // increase sees the first offence (Prometheus's advice for known label values).
            let id = member.node_id.to_string();
            metrics.counter("synod_sign_culprits_total", &[("culprit", &id)]).increment(0);
            metrics
                .counter("synod_sign_missed_shares_total", &[("signer", &id), ("reason", "unreachable")])
                .increment(0);
        }
        for member in s.members.iter().filter(|m| m.node_id != self.id) {
            let peer = member.node_id.to_string();
            let up = f64::from(u8::from(answering.get(&member.node_id).copied().unwrap_or(false)));
            metrics.gauge("synod_peer_up", &[("peer", &peer)]).set(up);
            let silent = self.silent_for(member.node_id).as_secs_f64();
            metrics.gauge("synod_peer_last_heard_seconds", &[("peer", &peer)]).set(silent);
            let lag = match (s.role, member.matched_index) {
                (RaftRole::Leader, matched) => last.saturating_sub(matched.unwrap_or(0)) as f64,
                // Only a leader knows how far each follower is; elsewhere the series reads 0.
                _ => 0.0,
            };
            metrics.gauge("synod_raft_replication_lag_entries", &[("peer", &peer)]).set(lag);
        }
        metrics.render()
    }
}

/// Counts leader changes as this node sees them and keeps the recorder's histograms drained
/// ([`crate::metrics::UPKEEP_INTERVAL`]), until the node is gone.
pub(super) async fn watch_metrics(node: Weak<Node>) {
    let Some(mut raft_metrics) = node.upgrade().map(|n| n.raft.metrics()) else { return };
    let mut leader = raft_metrics.borrow().current_leader;
    let mut upkeep = tokio::time::interval(crate::metrics::UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            changed = raft_metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = raft_metrics.borrow().current_leader;
                if now != leader {
                    leader = now;
                    let Some(node) = node.upgrade() else { return };
                    node.metrics.leader_changes.increment(1);
                }
            }
            _ = upkeep.tick() => {
                let Some(node) = node.upgrade() else { return };
                node.metrics.upkeep();
            }
        }
    }
}
