//! The node's metrics, in Prometheus's text format: what `GET /v1/sys/metrics` and the metrics
//! listener (`metrics_addr`, `GET /metrics`) serve.
//!
//! Each node owns its recorder ([`Metrics`]), never a process-global one: the simulator runs
//! several nodes in one process, and each must count only its own work. Events are recorded
//! where they happen, through handles registered on that recorder (counters and histograms);
//! figures that already live in the node's state (terms, indexes, pending requests, peers) are
//! read when a scrape renders them, so they cost nothing between scrapes.
//!
//! Names follow Prometheus's conventions: base units (`_seconds`, `_bytes`), `_total` on
//! counters, and labels of bounded cardinality only (a route template, never a path; a command
//! kind and refusal class, never a refusal's text; a node id). Every histogram has buckets, so
//! it renders as a histogram, not a summary. The list of every series, with its meaning, is in
//! ARCHITECTURE.md (*Operating a cluster*), and `deploy/grafana/synod.json` draws them.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use synod_proto::NodeId;

/// Buckets of every `_seconds` histogram: 1 ms to 2 min, covering a local signature (a few ms),
/// a signature across a WAN, a DKG, and a refresh of many keys.
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Buckets of the sessions a signing request took: one is the rule, each more means a signer
/// failed or lied (at most `n - t + 1`).
const SESSIONS_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0];

/// How often the recorder's histograms are drained into their buckets when nobody scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

const METADATA: Metadata<'static> = Metadata::new("synod", Level::INFO, Some(module_path!()));

/// Every series a node exports: name, kind, unit and help. The one list the recorder is
/// described from, and the one a test checks the dashboard against.
pub const SERIES: &[(&str, Kind, Option<Unit>, &str)] = &[
    ("synod_build_info", Kind::Gauge, None, "Always 1; the labels say which build runs."),
    // Signing.
    (
        "synod_sign_request_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "From a signing request's arrival at this node to its answer to the client, by outcome.",
    ),
    (
        "synod_sign_coordination_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "On the leader: from taking up a request to its signature or failure, by outcome.",
    ),
    (
        "synod_sign_sessions",
        Kind::Histogram,
        None,
        "On the leader: FROST sessions a request took (more than one: a signer failed or lied).",
    ),
    (
        "synod_sign_culprits_total",
        Kind::Counter,
        None,
        "On the leader: signature shares that failed verification, by the signer that sent them.",
    ),
    (
        "synod_sign_missed_shares_total",
        Kind::Counter,
        None,
        "On the leader: round-2 asks a signer gave no share for, by signer and why (unreachable, refused, malformed).",
    ),
    (
        "synod_signer_nonce_slots",
        Kind::Gauge,
        None,
        "This node's signer: nonce slots held in memory (preprocessed, or in use by a session).",
    ),
    ("synod_requests_pending", Kind::Gauge, None, "Signing requests whose policy is met, waiting for a signature."),
    ("synod_requests_awaiting_approval", Kind::Gauge, None, "Signing requests waiting for approvals."),
    // Key lifecycle.
    (
        "synod_dkg_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "This node's part of a distributed key generation, start to sealed share, by outcome.",
    ),
    (
        "synod_refresh_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "This node's part of a proactive share refresh, start to sealed share, by outcome.",
    ),
    // Commands.
    (
        "synod_commands_total",
        Kind::Counter,
        None,
        "Commands this node applied from the log, by kind and outcome (applied, refused, conflict).",
    ),
    ("synod_approvals_total", Kind::Counter, None, "Approvals this node applied from the log, by outcome."),
    // Webhooks.
    (
        "synod_webhook_deliveries_total",
        Kind::Counter,
        None,
        "Webhook notifications this node sent, by webhook and result (delivered, failed, given_up, dropped).",
    ),
    ("synod_webhook_queued", Kind::Gauge, None, "Webhook notifications waiting on this node, by webhook."),
    // Raft.
    ("synod_raft_term", Kind::Gauge, None, "The current Raft term."),
    ("synod_raft_is_leader", Kind::Gauge, None, "1 when this node is the leader."),
    ("synod_raft_has_leader", Kind::Gauge, None, "1 when this node knows a leader."),
    ("synod_raft_last_log_index", Kind::Gauge, None, "Index of the last entry in this node's log."),
    ("synod_raft_last_applied_index", Kind::Gauge, None, "Index of the last entry this node applied."),
    ("synod_raft_snapshot_index", Kind::Gauge, None, "Last index covered by this node's snapshot."),
    ("synod_raft_members", Kind::Gauge, None, "Members in Raft's configuration."),
    ("synod_raft_leader_changes_total", Kind::Counter, None, "Times this node saw the leader change (or go)."),
    (
        "synod_raft_snapshot_installs_total",
        Kind::Counter,
        None,
        "Snapshots from a leader this node verified and installed.",
    ),
    (
        "synod_raft_commit_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "A write this node proposed, from proposal to applied, by outcome.",
    ),
    (
        "synod_raft_replication_lag_entries",
        Kind::Gauge,
        None,
        "On the leader: entries a follower's log is behind the leader's, by peer.",
    ),
    (
        "synod_store_fsync_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "One synced write of the log (every append waiting on it shares it).",
    ),
    // Peers.
    (
        "synod_peer_up",
        Kind::Gauge,
        None,
        "1 when the peer answered this node's ping (asked at most once a second, at a scrape).",
    ),
    (
        "synod_peer_last_heard_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "Seconds since the peer last answered this node's Raft calls.",
    ),
    // The API.
    (
        "synod_api_requests_total",
        Kind::Counter,
        None,
        "API requests answered, by route template, method and status code.",
    ),
    (
        "synod_api_connections_refused_total",
        Kind::Counter,
        None,
        "API connections closed at accept, by which cap was full (total or per_ip).",
    ),
    ("synod_api_handshakes_failed_total", Kind::Counter, None, "API TLS handshakes that failed or timed out."),
    ("synod_api_header_timeouts_total", Kind::Counter, None, "API connections closed waiting for a request head."),
    (
        "synod_api_unauthenticated_requests_total",
        Kind::Counter,
        None,
        "API requests refused for want of a client certificate.",
    ),
    ("synod_api_requests_timed_out_total", Kind::Counter, None, "API requests cut off at the request deadline."),
    (
        "synod_console_requests_total",
        Kind::Counter,
        None,
        "Approver console requests answered, by route template and status code.",
    ),
    (
        "synod_console_handshakes_failed_total",
        Kind::Counter,
        None,
        "Approver console TLS handshakes that failed or timed out.",
    ),
    ("synod_tls_reloads_total", Kind::Counter, None, "SIGHUP reloads of the TLS material that took effect."),
    ("synod_tls_reload_failures_total", Kind::Counter, None, "SIGHUP reloads refused (the old material stays in use)."),
];

/// What kind of series a [`SERIES`] row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One node's recorder and the handles of its hottest series.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    /// The series with no label, registered once.
    pub leader_changes: Counter,
    pub snapshot_installs: Counter,
    pub fsync: Histogram,
}

impl Metrics {
    /// A recorder for node `node`: every series carries `node="<id>"`.
    pub fn new(node: NodeId) -> Arc<Metrics> {
        let builder = PrometheusBuilder::new()
            .add_global_label("node", node.to_string())
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full("synod_sign_sessions".into()), SESSIONS_BUCKETS))
            .expect("the buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        for (name, kind, unit, help) in SERIES {
            let name = KeyName::from_const_str(name);
            let help = SharedString::const_str(help);
            match kind {
                Kind::Counter => recorder.describe_counter(name, *unit, help),
                Kind::Gauge => recorder.describe_gauge(name, *unit, help),
                Kind::Histogram => recorder.describe_histogram(name, *unit, help),
            }
        }
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        let build = [
            Label::new("version", env!("CARGO_PKG_VERSION")),
            Label::new("faults", if crate::faults::available().is_empty() { "none" } else { "test-build" }),
        ];
        recorder.register_gauge(&Key::from_parts("synod_build_info", build.to_vec()), &METADATA).set(1.0);
        // Series of events that may not have happened yet exist from the start, at zero.
        for outcome in ["applied", "refused"] {
            let _ = recorder.register_counter(&key("synod_approvals_total", &[("outcome", outcome)]), &METADATA);
        }
        for histogram in ["synod_dkg_duration_seconds", "synod_refresh_duration_seconds"] {
            for outcome in ["sealed", "failed"] {
                let _ = recorder.register_histogram(&key(histogram, &[("outcome", outcome)]), &METADATA);
            }
        }
        Arc::new(Metrics {
            leader_changes: recorder.register_counter(&Key::from_name("synod_raft_leader_changes_total"), &METADATA),
            snapshot_installs: recorder
                .register_counter(&Key::from_name("synod_raft_snapshot_installs_total"), &METADATA),
            fsync: recorder.register_histogram(&Key::from_name("synod_store_fsync_duration_seconds"), &METADATA),
            recorder,
            handle,
            process,
        })
    }

    /// The counter `name` with `labels` (registered on first use).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &METADATA)
    }

    /// The gauge `name` with `labels` (registered on first use).
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// The histogram `name` with `labels` (registered on first use).
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder.register_histogram(&key(name, labels), &METADATA)
    }

    /// Records how long something took, in seconds, under `name` with an `outcome` label.
    pub fn duration(&self, name: &'static str, outcome: &str, took: Duration) {
        self.histogram(name, &[("outcome", outcome)]).record(took.as_secs_f64());
    }

    /// Drains recorded histogram samples into their buckets (bounded memory between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The series in Prometheus's text format: the process's, and everything recorded since the
    /// node started. The node sets the gauges that mirror its state first
    /// (`Node::render_metrics`).
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.render()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_recorders_count_apart_and_histograms_render_as_histograms() {
        let one = Metrics::new(1);
        let two = Metrics::new(2);
        one.counter("synod_sign_culprits_total", &[("culprit", "3")]).increment(2);
        one.duration("synod_sign_request_duration_seconds", "signed", Duration::from_millis(3));
        one.histogram("synod_sign_sessions", &[("outcome", "signed")]).record(1.0);
        let first = one.handle.render();
        let second = two.handle.render();
        assert!(first.contains(r#"synod_sign_culprits_total{node="1",culprit="3"} 2"#), "{first}");
        assert!(!second.contains("synod_sign_culprits_total{"), "{second}");
        assert!(first.contains("# TYPE synod_sign_request_duration_seconds histogram"), "{first}");
        assert!(
            first.contains(r#"synod_sign_request_duration_seconds_bucket{node="1",outcome="signed",le="0.005"} 1"#),
            "{first}"
        );
        assert!(first.contains("# TYPE synod_sign_sessions histogram"), "{first}");
        assert!(first.contains(r#"synod_build_info{node="1",version=""#), "{first}");
    }

    #[test]
    fn every_series_is_named_by_prometheus_conventions() {
        for (name, kind, unit, help) in SERIES {
            assert!(name.starts_with("synod_"), "{name}");
            assert!(!help.is_empty() && help.ends_with('.'), "{name}: {help}");
            assert_eq!(*kind == Kind::Counter, name.ends_with("_total"), "{name}: only counters end in _total");
            assert_eq!(*unit == Some(Unit::Seconds), name.ends_with("_seconds"), "{name}: seconds are named so");
        }
    }
}
