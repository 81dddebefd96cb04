//! systemd's notify protocol (`sd_notify(3)`) for `synod node start` under a `Type=notify`
//! unit: `READY=1` once the node serves, `STATUS=` with its catch-up progress, `WATCHDOG=1`
//! pings, `RELOADING=1` … `READY=1` around a SIGHUP reload and `STOPPING=1` at shutdown.
//!
//! READY comes as soon as the node listens and its KEK opens its secrets, not when it has
//! caught up: a lone node cannot catch up without a quorum, so waiting for one would make
//! every node of a restarted cluster time out its start and restart, over and over. Catch-up
//! shows in `STATUS=` instead (`systemctl status synod`).
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or a unit of another type) a [`Notifier`] is
//! inert: it starts no task and sends nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use synod_proto::api::{RaftRole, Status};

use crate::node::Node;

/// How often the status task reads the node's status; a line is sent only when it changed.
pub const STATUS_PERIOD_MS: u64 = 2_000;

/// What the status line carries after a refused SIGHUP reload, until one is accepted.
pub const RELOAD_REFUSED_NOTE: &str = "; SIGHUP reload refused, the old TLS material stays (see the journal)";

/// The shortest watchdog period honoured: a smaller `WATCHDOG_USEC` would have the node
/// spend its time pinging (and tokio's interval refuses a zero period).
pub const WATCHDOG_PERIOD_MS_MIN: u64 = 100;

/// Speaks systemd's notify protocol for one node process. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// How often systemd expects `WATCHDOG=1` (`WatchdogSec=`), when it asked for it.
    watchdog: Option<Duration>,
    /// The last `STATUS=` line sent, so that the status task sends only changes.
    status: Mutex<String>,
    /// Whether the last SIGHUP reload was refused: the status line says so until one is
    /// accepted, since the journal line that explains it is easy to miss.
    reload_refused: AtomicBool,
}

/// The tasks [`Notifier::start_tasks`] started; dropping this stops them.
pub struct NotifyTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for NotifyTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier { inner: None };
        }
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        let inner = Inner { watchdog, status: Mutex::new(String::new()), reload_refused: AtomicBool::new(false) };
        Notifier { inner: Some(Arc::new(inner)) }
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` was set).
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// `READY=1` with the node's first status line: it listens and its KEK is unsealed.
    pub fn ready(&self, node: &Node) {
        let Some(inner) = &self.inner else { return };
        let line = inner.line(&node.status());
        inner.set_status(&line);
        send(&[NotifyState::Ready, NotifyState::Status(&line)]);
    }

    /// `RELOADING=1` before a SIGHUP reload. systemd 253 and later want the monotonic time
    /// with it, to tell this reload from an earlier one.
    pub fn reloading(&self) {
        if self.inner.is_none() {
            return;
        }
        let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading TLS material (SIGHUP)")];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        send(&states);
    }

    /// `READY=1` after a SIGHUP reload. A refused reload leaves the node serving with its old
    /// material, so it is ready either way; the status line says it was refused until a
    /// later reload is accepted.
    pub fn reloaded(&self, node: &Node, accepted: bool) {
        let Some(inner) = &self.inner else { return };
        inner.reload_refused.store(!accepted, Ordering::Relaxed);
        let line = inner.line(&node.status());
        inner.set_status(&line);
        send(&[NotifyState::Ready, NotifyState::Status(&line)]);
    }

    /// `STOPPING=1`: SIGINT or SIGTERM arrived and the node shuts down.
    pub fn stopping(&self) {
        if self.inner.is_none() {
            return;
        }
        send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    }

    /// Starts the status task and, when systemd asked for one, the watchdog task. Both run
    /// on the caller's runtime: a runtime that hangs stops pinging, and systemd restarts the
    /// node (`WatchdogSec=`).
    pub fn start_tasks(&self, node: &Arc<Node>) -> NotifyTasks {
        let Some(inner) = &self.inner else { return NotifyTasks(Vec::new()) };
        let mut tasks = vec![tokio::spawn(status_task(inner.clone(), node.clone()))];
        if let Some(watchdog) = inner.watchdog {
            let period = (watchdog / 2).max(Duration::from_millis(WATCHDOG_PERIOD_MS_MIN));
            tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog: pinging");
            tasks.push(tokio::spawn(watchdog_task(period, node.clone())));
        }
        NotifyTasks(tasks)
    }
}

impl Inner {
    /// The status line for `status`, with the note of a refused reload.
    fn line(&self, status: &Status) -> String {
        let mut line = status_line(status);
        if self.reload_refused.load(Ordering::Relaxed) {
            line.push_str(RELOAD_REFUSED_NOTE);
        }
        line
    }

    fn set_status(&self, line: &str) {
        line.clone_into(&mut self.status.lock().expect("status lock"));
    }
}

/// Sends `states` in one datagram. A failure is logged, never fatal: the node serves whether
/// or not its service manager hears it.
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// Reads the node's status every [`STATUS_PERIOD_MS`] and sends the line when it changed.
async fn status_task(inner: Arc<Inner>, node: Arc<Node>) {
    let mut every = tokio::time::interval(Duration::from_millis(STATUS_PERIOD_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let line = inner.line(&node.status());
        let changed = {
            let mut last = inner.status.lock().expect("status lock");
            let changed = *last != line;
            if changed {
                last.clone_from(&line);
            }
            changed
        };
        if changed {
            send(&[NotifyState::Status(&line)]);
        }
    }
}

/// Pings every `period` (half of `WatchdogSec=`) while the node's Raft core runs. A core
/// that stopped (a storage failure stops openraft) leaves a process that serves nothing, so
/// the pings stop and systemd restarts it. Reading health takes the node's state lock, so a
/// node stuck on that lock stops pinging too.
async fn watchdog_task(period: Duration, node: Arc<Node>) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if node.health().role == RaftRole::Shutdown {
            tracing::error!("the Raft core stopped; no more watchdog pings, so systemd restarts this node");
            return;
        }
        send(&[NotifyState::Watchdog]);
    }
}

/// One line for `systemctl status`: the node's role, term and how far it has applied its
/// log, e.g. `following node 2, term 5, applied 120 of 450`.
pub fn status_line(status: &Status) -> String {
    let applied = status.last_applied_index.unwrap_or(0);
    let logged = status.last_log_index.unwrap_or(0);
    let progress =
        if applied < logged { format!("applied {applied} of {logged}") } else { format!("applied {applied}") };
    let term = status.term;
    let mut line = match (status.role, status.leader_id) {
        (RaftRole::Shutdown, _) => "Raft stopped".to_string(),
        (RaftRole::Leader, _) => format!("leader, term {term}, {progress}"),
        (RaftRole::Learner, Some(leader)) => format!("learner following node {leader}, term {term}, {progress}"),
        (_, Some(leader)) if leader != status.node_id => format!("following node {leader}, term {term}, {progress}"),
        _ if status.cluster_id.is_none() && logged == 0 => {
            "no cluster yet: waiting for `synod cluster init` or to be added as a member".to_string()
        }
        (RaftRole::Candidate, _) => format!("candidate, term {term}, no leader known; {progress}"),
        _ => format!("no leader known, term {term}; {progress}"),
    };
    if status.signing_paused.is_some() {
        line.push_str("; signing paused while catching up");
    }
    if !status.shares_missing.is_empty() {
        line.push_str(&format!("; {} key shares missing", status.shares_missing.len()));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: RaftRole, leader_id: Option<u64>, applied: u64, logged: u64) -> Status {
        let mut s: Status = serde_json::from_value(serde_json::json!({
            "node_id": 1, "cluster_id": "c1", "role": "follower", "leader_id": null, "term": 5,
            "last_log_index": null, "last_applied_index": null, "snapshot_index": null, "purged_index": null,
            "members": [], "admins": [], "applied_commands": 0, "rejected_commands": 0,
            "recent_rejections": [], "unauthorized_membership_entries": 0, "kek": "file",
            "memory_locked": false, "memory_lock_refused": null, "core_dumps_off": true,
            "incarnation": "i", "shares_missing": []
        }))
        .expect("a status document");
        s.role = role;
        s.leader_id = leader_id;
        s.last_applied_index = Some(applied);
        s.last_log_index = Some(logged);
        s
    }

    #[test]
    fn notify_status_line_names_role_leader_term_and_progress() {
        // Proves each role reads as an operator expects in `systemctl status`, with the
        // applied index next to the log's end while the node catches up and alone once caught up.
        assert_eq!(
            status_line(&status(RaftRole::Follower, Some(2), 120, 450)),
            "following node 2, term 5, applied 120 of 450"
        );
        assert_eq!(
            status_line(&status(RaftRole::Follower, Some(2), 450, 450)),
            "following node 2, term 5, applied 450"
        );
        assert_eq!(status_line(&status(RaftRole::Leader, Some(1), 450, 450)), "leader, term 5, applied 450");
        assert_eq!(status_line(&status(RaftRole::Follower, None, 120, 120)), "no leader known, term 5; applied 120");
        assert_eq!(
            status_line(&status(RaftRole::Candidate, None, 120, 130)),
            "candidate, term 5, no leader known; applied 120 of 130"
        );
        assert_eq!(
            status_line(&status(RaftRole::Learner, Some(3), 0, 40)),
            "learner following node 3, term 5, applied 0 of 40"
        );
        assert_eq!(status_line(&status(RaftRole::Shutdown, None, 7, 7)), "Raft stopped");
    }

    #[test]
    fn notify_status_line_before_init_and_with_paused_signing() {
        // Proves a node with no cluster says what it waits for, and that paused signing and
        // missing shares are appended, never hidden by the role.
        let mut fresh = status(RaftRole::Follower, None, 0, 0);
        fresh.cluster_id = None;
        assert_eq!(status_line(&fresh), "no cluster yet: waiting for `synod cluster init` or to be added as a member");
        let mut paused = status(RaftRole::Follower, Some(2), 10, 90);
        paused.signing_paused = Some("catching up".into());
        paused.shares_missing = vec!["k1".into(), "k2".into()];
        assert_eq!(
            status_line(&paused),
            "following node 2, term 5, applied 10 of 90; signing paused while catching up; 2 key shares missing"
        );
    }

    #[test]
    fn notify_without_socket_is_inert() {
        // Proves a Notifier without NOTIFY_SOCKET starts nothing: every call returns at once.
        let notifier = Notifier { inner: None };
        assert!(!notifier.enabled());
        notifier.reloading();
        notifier.stopping();
    }
}
