//! Local clusters of real node processes on 127.0.0.1: the pieces that
//! `synod dev`, `synod bench` and the integration tests' harness
//! (`tests/src/lib.rs`) share, so port choice and the port-move retry exist
//! once.
//!
//! A new node's ports are chosen by binding port 0 and releasing it before the
//! node binds it itself. Two things can go wrong in between, and both are
//! handled here: the OS may hand a just-released port to the next `bind(0)` of
//! this process (so [`free_addrs`] never hands a port out twice), and another
//! process may take the port first (the node then exits saying
//! [`PORT_TAKEN`]; [`exited_for_taken_port`] recognises that and
//! [`move_listen`] gives it new ports). A member cannot move: its addresses are
//! in the committed membership, so only nodes of a cluster not yet initialised
//! (or not yet added) are moved.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
pub use synod_node::server::PORT_TAKEN;

/// How often a new node may move to other ports while starting.
pub const PORT_MOVES_MAX: u32 = 5;

/// Ports this process has handed out, as (udp, port).
static HANDED_OUT: Mutex<BTreeSet<(bool, u16)>> = Mutex::new(BTreeSet::new());

/// `n` pairs of free loopback addresses (UDP for Raft, TCP for the API), none
/// of which this process handed out before. Every socket stays bound until all
/// are chosen.
pub fn free_addrs(n: u64) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
    let mut held = Vec::new();
    let mut chosen = Vec::new();
    let mut book = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    while (chosen.len() as u64) < n {
        let udp = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP port on 127.0.0.1")?;
        let tcp = TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP port on 127.0.0.1")?;
        let (raft, api) = (udp.local_addr()?, tcp.local_addr()?);
        held.push((udp, tcp));
        if book.contains(&(true, raft.port())) || book.contains(&(false, api.port())) {
            continue;
        }
        book.insert((true, raft.port()));
        book.insert((false, api.port()));
        chosen.push((raft, api));
    }
    Ok(chosen)
}

/// Whether a node that exited did so because another program held one of its
/// ports (it says [`PORT_TAKEN`] in its log).
pub fn exited_for_taken_port(log: &Path) -> bool {
    log_tail(log, 12).contains(PORT_TAKEN)
}

/// Rewrites the `raft_listen` and `api_listen` lines of a node's config and
/// nothing else.
pub fn move_listen(config: &Path, raft: SocketAddr, api: SocketAddr) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config).with_context(|| format!("cannot read {}", config.display()))?;
    let mut moved = String::with_capacity(text.len());
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            "raft_listen" => moved.push_str(&format!("raft_listen = \"{raft}\"")),
            "api_listen" => moved.push_str(&format!("api_listen = \"{api}\"")),
            _ => moved.push_str(line),
        }
        moved.push('\n');
    }
    std::fs::write(config, moved).with_context(|| format!("cannot write {}", config.display()))
}

/// The last `lines` lines of a node's log (empty when it cannot be read).
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No port is handed out twice by one process, even across calls.
    #[test]
    fn local_free_addrs_never_repeat() {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            for (raft, api) in free_addrs(3).unwrap() {
                assert!(seen.insert((true, raft.port())), "UDP port {} handed out twice", raft.port());
                assert!(seen.insert((false, api.port())), "TCP port {} handed out twice", api.port());
            }
        }
    }

    /// Moving a node changes its listen lines only, whatever else the config holds.
    #[test]
    fn local_move_listen_changes_only_listen_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let before = "node_id = 2\nraft_listen = \"127.0.0.1:1\"\napi_listen = \"127.0.0.1:2\"\n[tls]\n\
                      cert = \"certs/127.0.0.1:1.crt\"\n";
        std::fs::write(&path, before).unwrap();
        move_listen(&path, "127.0.0.1:7".parse().unwrap(), "127.0.0.1:8".parse().unwrap()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "node_id = 2\nraft_listen = \"127.0.0.1:7\"\napi_listen = \"127.0.0.1:8\"\n[tls]\n\
             cert = \"certs/127.0.0.1:1.crt\"\n"
        );
    }
}
