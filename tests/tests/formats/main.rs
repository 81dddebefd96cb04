//! Signing formats through a real cluster, each artifact checked by its format's own stock
//! verifier (ssh-keygen and git, PyJWT and jwcrypto, minisign, gpgv and sqv, pyHanko,
//! http-message-signatures), with a tampered artifact each of them rejects.
//!
//! One test binary, a module per format; each test starts its own 3-node cluster.

mod cms;
mod core;
mod http;
mod jws;
mod minisign;
mod openpgp;
mod sshsig;

use std::path::{Path, PathBuf};

use serde_json::Value;
use synod_tests::{ok, Cluster};

/// A 3-node cluster with a 2-of-3 key `name` under the open policy.
pub fn cluster_with_key(name: &str) -> Cluster {
    let cluster = Cluster::start(3);
    let out = ok(&cluster.synod(1, &["key", "create", name, "-t", "2", "--open-policy", "-o", "json"]));
    let key: Value = serde_json::from_str(&out).expect("key JSON");
    assert_eq!(key["status"], "active", "{key}");
    cluster
}

/// Writes `bytes` to `name` in the cluster's directory.
pub fn write(cluster: &Cluster, name: &str, bytes: &[u8]) -> PathBuf {
    let path = cluster.path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs a stock tool; returns (success, stdout + stderr).
pub fn tool(program: &str, args: &[&str], dir: Option<&Path>) -> (bool, String) {
    let mut command = std::process::Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command.output().unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
