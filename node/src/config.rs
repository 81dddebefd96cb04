//! The node's configuration file (`node.toml`) and its validation.
//!
//! Errors name the file, the field and what is expected. Relative paths in
//! the file are resolved against the file's own directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use synod_proto::NodeId;

/// `node.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; must match the CN of its certificate (`synod-node-<id>`).
    pub node_id: NodeId,
    /// Where the node keeps its store. Created on first start.
    pub data_dir: PathBuf,
    /// UDP address for QUIC peer traffic (Raft, forwarding).
    pub raft_listen: SocketAddr,
    /// TCP address for the HTTPS client API.
    pub api_listen: SocketAddr,
    pub tls: TlsFiles,
    #[serde(default)]
    pub raft: RaftTuning,
    /// When set, the node refuses a data directory of another cluster.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// `text` (default) or `json` log lines on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
}

/// Certificate files issued by `synod ca issue node`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Raft timing and log compaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind the latest snapshot (for slow followers).
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 200,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_every_entries: 2000,
            logs_kept_after_snapshot: 500,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: field `{field}` {message}")]
    Invalid { path: PathBuf, field: &'static str, message: String },
}

impl NodeConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config: NodeConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.data_dir, &mut config.tls.ca_cert, &mut config.tls.cert, &mut config.tls.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid { path: path.to_path_buf(), field, message };
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be 1 or more (0 is reserved)".into()));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.heartbeat_ms * 3 > r.election_timeout_min_ms {
            return Err(invalid(
                "raft.heartbeat_ms",
                format!(
                    "must be positive and at most a third of raft.election_timeout_min_ms ({})",
                    r.election_timeout_min_ms
                ),
            ));
        }
        if r.election_timeout_min_ms >= r.election_timeout_max_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms".into(),
            ));
        }
        if r.snapshot_every_entries == 0 {
            return Err(invalid("raft.snapshot_every_entries", "must be 1 or more".into()));
        }
        if self.raft_listen == self.api_listen {
            return Err(invalid("api_listen", "must differ from raft_listen".into()));
        }
        Ok(())
    }

    /// Serialises to TOML, for `synod dev` and docs.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("node.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const GOOD: &str = r#"
node_id = 1
data_dir = "data"
raft_listen = "127.0.0.1:7001"
api_listen = "127.0.0.1:8201"
[tls]
ca_cert = "ca.crt"
cert = "node-1.crt"
key = "node-1.key"
"#;

    #[test]
    fn config_good_file_resolves_relative_paths() {
        // A minimal config loads, with defaults filled and paths made absolute against its directory.
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig::load(&write(dir.path(), GOOD)).unwrap();
        assert_eq!(config.data_dir, dir.path().join("data"));
        assert_eq!(config.raft.heartbeat_ms, 200);
    }

    #[test]
    fn config_errors_name_file_and_field() {
        // Unknown fields, bad addresses and inconsistent timings name the file and the field.
        let dir = tempfile::tempdir().unwrap();
        let err = NodeConfig::load(&write(dir.path(), &format!("{GOOD}\nbogus = 1\n"))).unwrap_err().to_string();
        assert!(err.contains("node.toml") && err.contains("bogus"), "{err}");
        let err =
            NodeConfig::load(&write(dir.path(), &GOOD.replace("127.0.0.1:7001", "nowhere"))).unwrap_err().to_string();
        assert!(err.contains("raft_listen"), "{err}");
        let text = format!("{GOOD}\n[raft]\nheartbeat_ms = 900\n");
        let err = NodeConfig::load(&write(dir.path(), &text)).unwrap_err().to_string();
        assert!(err.contains("raft.heartbeat_ms"), "{err}");
        let err = NodeConfig::load(&dir.path().join("missing.toml")).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }
}
