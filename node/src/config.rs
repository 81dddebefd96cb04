//! The node's configuration file (`node.toml`) and its validation.
//!
//! Errors name the file, the field and what is expected. Relative paths in
//! the file are resolved against the file's own directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use synod_proto::command::COMMAND_TTL_MS_MAX;
use synod_proto::{NodeId, OperatorKey};

/// The smallest `raft.clock_skew_ms_max` a node accepts: below it, honest
/// clock error and network delay alone would make followers refuse entries.
pub const CLOCK_SKEW_MS_MIN: u64 = 1_000;

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
    /// When set, a plain-HTTP listener serving only `GET /metrics` (Prometheus's
    /// text format) with no TLS and no identity, for a scraper that cannot sign
    /// reads. Bind it to loopback or a monitoring network: anyone who reaches it
    /// reads the node's figures (never a secret). Unset: no such listener, and
    /// `/v1/sys/metrics` on the API needs an operator's read signature.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    pub tls: TlsFiles,
    /// Where the key-encryption key that seals this node's secrets comes from.
    pub kek: KekConfig,
    #[serde(default)]
    pub raft: RaftTuning,
    /// When set, the node refuses a data directory of another cluster (the pin
    /// may name the cluster's id or the name given at `cluster init`).
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// The operator keys (hex) that may initialise the cluster this node
    /// joins: its genesis must be signed by one of them. A client certificate
    /// is not enough to make a node's cluster; the node's operator decides
    /// whose genesis it takes (`synod operator show --key admin.pem` prints a
    /// key). Required.
    #[serde(default)]
    pub genesis_admins: Vec<OperatorKey>,
    /// `text` (default) or `json` log lines on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// The approver console's own HTTPS listener (`[console]`); absent, no console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
}

/// `[console]`: where the approver console listens and the certificate it shows browsers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// TCP address of the console's HTTPS listener (browsers open `https://<dns name>:<port>/console`).
    pub listen: SocketAddr,
    /// A P-256 (or RSA) server certificate chain in PEM for the name browsers use: browsers do
    /// not verify the cluster CA's Ed25519 certificates. `synod ca issue console` makes one.
    pub certificate: PathBuf,
    /// Its private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

/// Certificate files issued by `synod ca issue node`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The key-encryption key (KEK) backend. The node never falls back from one
/// backend to another: a missing or wrong KEK stops it at start-up.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum KekConfig {
    /// A 256-bit KEK in a file of mode 0600. A development setting: the node
    /// says so loudly unless it runs under `synod dev`.
    File { path: PathBuf },
    /// A KEK derived with Argon2id from a passphrase: from the file named by
    /// `<env>_FILE`, the systemd credential `<env>`, the environment variable
    /// `env` (default `SYNOD_KEK_PASSPHRASE`; scrubbed from the process's
    /// environment at start) or, on a terminal, a prompt.
    Passphrase {
        #[serde(default = "default_passphrase_env")]
        env: String,
    },
    /// A non-extractable AES-256 key on a PKCS#11 token; sealing happens in the token.
    /// A module that reads its own configuration from the environment (SoftHSM2's
    /// `SOFTHSM2_CONF`) gets it from the node process's environment.
    Pkcs11 {
        /// The PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
        module: PathBuf,
        token_label: String,
        key_label: String,
        /// Environment variable holding the user PIN (default `SYNOD_PKCS11_PIN`;
        /// also `<pin_env>_FILE` and the systemd credential `<pin_env>`).
        #[serde(default = "default_pin_env")]
        pin_env: String,
        /// A file holding the PIN (mode 0600); used when set, instead of `pin_env`.
        #[serde(default)]
        pin_file: Option<PathBuf>,
    },
}

/// The variable that holds the KEK passphrase unless the config names another.
pub const PASSPHRASE_ENV_DEFAULT: &str = "SYNOD_KEK_PASSPHRASE";
/// The variable that holds the token PIN unless the config names another.
pub const PIN_ENV_DEFAULT: &str = "SYNOD_PKCS11_PIN";

fn default_passphrase_env() -> String {
    PASSPHRASE_ENV_DEFAULT.into()
}

fn default_pin_env() -> String {
    PIN_ENV_DEFAULT.into()
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
    /// The fewest members that must vouch for a snapshot this node installs.
    /// A node with state requires a majority of its members and the largest
    /// key threshold, or this, whichever is more; a node with no state yet
    /// (empty, joining) has only this. Set it to the largest key threshold.
    pub snapshot_endorsements_min: usize,
    /// How far ahead of this node's clock an entry may be stamped: a follower
    /// refuses AppendEntries carrying an entry stamped further ahead, and a
    /// signer allows this much when it judges expiry by its own clock. Above
    /// the honest clock error, below a command's longest validity.
    pub clock_skew_ms_max: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        // openraft draws each node's election timeout once per boot and checks it on
        // a tick of 1.5 heartbeats, so the range spans many ticks (here ~10) to keep
        // candidates from colliding term after term.
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2500,
            snapshot_every_entries: 2000,
            logs_kept_after_snapshot: 500,
            snapshot_endorsements_min: 2,
            clock_skew_ms_max: crate::time::CLOCK_SKEW_MS_MAX_DEFAULT,
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
        let mut paths = vec![&mut config.data_dir, &mut config.tls.ca_cert, &mut config.tls.cert, &mut config.tls.key];
        if let Some(console) = &mut config.console {
            paths.push(&mut console.certificate);
            paths.push(&mut console.key);
        }
        match &mut config.kek {
            KekConfig::File { path } => paths.push(path),
            KekConfig::Pkcs11 { pin_file: Some(pin_file), .. } => paths.push(pin_file),
            _ => {}
        }
        for p in paths {
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
        if r.clock_skew_ms_max < CLOCK_SKEW_MS_MIN || r.clock_skew_ms_max >= COMMAND_TTL_MS_MAX {
            return Err(invalid(
                "raft.clock_skew_ms_max",
                format!(
                    "must be at least {CLOCK_SKEW_MS_MIN} ms (above honest clock error) and below a command's \
                     longest validity ({COMMAND_TTL_MS_MAX} ms), or a leader's clock could outlive every command"
                ),
            ));
        }
        if r.snapshot_every_entries == 0 {
            return Err(invalid("raft.snapshot_every_entries", "must be 1 or more".into()));
        }
        if r.snapshot_endorsements_min < 2 {
            return Err(invalid(
                "raft.snapshot_endorsements_min",
                "must be 2 or more: one node alone must not be able to vouch for a snapshot".into(),
            ));
        }
        if self.genesis_admins.is_empty() {
            return Err(invalid(
                "genesis_admins",
                "must name at least one operator key (hex) allowed to initialise the cluster; \
                 print one with `synod operator show --key admin.pem`"
                    .into(),
            ));
        }
        if self.raft_listen == self.api_listen {
            return Err(invalid("api_listen", "must differ from raft_listen".into()));
        }
        if let Some(console) = &self.console {
            if console.listen == self.api_listen || Some(console.listen) == self.metrics_listen {
                return Err(invalid("console.listen", "must differ from api_listen and metrics_listen".into()));
            }
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
genesis_admins = ["d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"]
[tls]
ca_cert = "ca.crt"
cert = "node-1.crt"
key = "node-1.key"
[kek]
backend = "file"
path = "kek.bin"
"#;

    #[test]
    fn config_good_file_resolves_relative_paths() {
        // A minimal config loads, with defaults filled and paths made absolute against its directory.
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig::load(&write(dir.path(), GOOD)).unwrap();
        assert_eq!(config.data_dir, dir.path().join("data"));
        assert_eq!(config.raft.heartbeat_ms, 100);
        assert_eq!(config.raft.clock_skew_ms_max, crate::time::CLOCK_SKEW_MS_MAX_DEFAULT);
        assert!(matches!(config.kek, KekConfig::File { ref path } if *path == dir.path().join("kek.bin")));
    }

    #[test]
    fn config_without_kek_is_refused() {
        // A node config must say where its KEK comes from; the error names the section.
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.split("[kek]").next().unwrap();
        let err = NodeConfig::load(&write(dir.path(), text)).unwrap_err().to_string();
        assert!(err.contains("kek"), "{err}");
        let text = GOOD.replace("backend = \"file\"", "backend = \"vault\"");
        let err = NodeConfig::load(&write(dir.path(), &text)).unwrap_err().to_string();
        assert!(err.contains("vault") || err.contains("backend"), "{err}");
    }

    #[test]
    fn config_errors_name_file_and_field() {
        // Unknown fields, bad addresses and inconsistent timings name the file and the field.
        let dir = tempfile::tempdir().unwrap();
        let err = NodeConfig::load(&write(dir.path(), &format!("bogus = 1\n{GOOD}"))).unwrap_err().to_string();
        assert!(err.contains("node.toml") && err.contains("bogus"), "{err}");
        let err =
            NodeConfig::load(&write(dir.path(), &GOOD.replace("127.0.0.1:7001", "nowhere"))).unwrap_err().to_string();
        assert!(err.contains("raft_listen"), "{err}");
        let text = GOOD.replace("[kek]", "[raft]\nheartbeat_ms = 900\n[kek]");
        let err = NodeConfig::load(&write(dir.path(), &text)).unwrap_err().to_string();
        assert!(err.contains("raft.heartbeat_ms"), "{err}");
        let text = GOOD.replace("[kek]", "[raft]\nclock_skew_ms_max = 86400000\n[kek]");
        let err = NodeConfig::load(&write(dir.path(), &text)).unwrap_err().to_string();
        assert!(err.contains("raft.clock_skew_ms_max"), "{err}");
        let err = NodeConfig::load(&dir.path().join("missing.toml")).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }

    #[test]
    fn config_console_section_is_optional_and_resolved() {
        // Without [console] there is no console; with it, its files resolve against the config's
        // directory, and a console on the API's address is refused.
        let dir = tempfile::tempdir().unwrap();
        assert!(NodeConfig::load(&write(dir.path(), GOOD)).unwrap().console.is_none());
        let text = format!("{GOOD}[console]\nlisten = \"127.0.0.1:8443\"\ncertificate = \"c.crt\"\nkey = \"c.key\"\n");
        let console = NodeConfig::load(&write(dir.path(), &text)).unwrap().console.expect("a console");
        assert_eq!(console.certificate, dir.path().join("c.crt"));
        assert_eq!(console.key, dir.path().join("c.key"));
        let text = text.replace("127.0.0.1:8443", "127.0.0.1:8201");
        let err = NodeConfig::load(&write(dir.path(), &text)).unwrap_err().to_string();
        assert!(err.contains("console.listen"), "{err}");
    }

    #[test]
    fn config_without_genesis_admins_is_refused() {
        // A node must be told whose genesis it may take; a config without any says how to get a key.
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.lines().filter(|l| !l.starts_with("genesis_admins")).collect::<Vec<_>>().join("\n");
        let err = NodeConfig::load(&write(dir.path(), &text)).unwrap_err().to_string();
        assert!(err.contains("genesis_admins") && err.contains("synod operator show"), "{err}");
        let text = GOOD.replace("d75a98", "zz5a98");
        let err = NodeConfig::load(&write(dir.path(), &text)).unwrap_err().to_string();
        assert!(err.contains("genesis_admins") || err.contains("hex"), "{err}");
    }
}
