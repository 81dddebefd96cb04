//! The `synod` command line: server commands (`node start`, `dev`, `ca`) and
//! client commands that speak the HTTP API (`status`, `kv`, `member`, ...).
//!
//! Client commands read their connection from flags or the environment, the
//! way Vault's CLI does: `SYNOD_ADDR`, `SYNOD_CACERT`, `SYNOD_CLIENT_CERT`,
//! `SYNOD_CLIENT_KEY`, and `SYNOD_OPERATOR_KEY` for commands that must be signed.
//!
//! Every command that prints a result takes `-o table|json` (`SYNOD_OUTPUT`):
//! tables and `key: value` lists for people, one JSON document on stdout for
//! programs, and under JSON a failure as `{"errors": [...]}` on stderr
//! ([`requested_output`], `display`). `completion` and `man` print what a shell
//! or `man` reads and take no `-o`.

pub mod authz;
pub mod backup;
pub mod bench;
pub mod client;
pub mod dev;
pub mod display;
pub mod formats;
pub mod keys;
pub mod local;
pub mod operator;
pub mod passkey;
pub mod surface;
pub mod webhook;

use std::path::PathBuf;

use clap::{ArgMatches, Args, Parser, Subcommand, ValueEnum};
use synod_proto::NodeId;

/// Synod: a threshold-signing cluster. No single node and no single operator can sign alone.
#[derive(Parser, Debug)]
#[command(name = "synod", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Top,
}

#[derive(Subcommand, Debug)]
pub enum Top {
    /// Run a node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Run a local development cluster on 127.0.0.1, each node its own process.
    Dev(DevArgs),
    /// Manage the cluster's certificate authority and node/client certificates.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Key-encryption keys: create a KEK file or a key inside a PKCS#11 token; rotate a node's KEK.
    #[command(subcommand)]
    Kek(KekCmd),
    /// Operators: make and show operator keys; add, remove and list them in the cluster with roles.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Initialise a new cluster or change its members.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Show the cluster as the addressed node sees it: members, leader, roles.
    Status(ClientArgs),
    /// Show the addressed node's health (no client certificate needed).
    Health(ClientArgs),
    /// Read and write replicated key-value metadata.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Create, import, list and show threshold signing keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Sign a file with a cluster key: commits a request, waits for the signature.
    Sign(SignArgs),
    /// Verify a signature offline or with a cluster key's public keys: raw Ed25519 (RFC 8032)
    /// or any format `synod sign --format` writes.
    Verify(VerifyArgs),
    /// Serve an ssh-agent backed by the cluster: `ssh-keygen -Y sign`, and git with
    /// gpg.format=ssh, sign through it; each signature is a request the cluster checks.
    Agent(formats::agent::AgentArgs),
    /// Seal a PDF with a cluster key: a PAdES signature (incremental update, detached CMS).
    Seal(formats::cms::SealArgs),
    /// Signing requests: make one (possibly awaiting approvals), show it, wait for it.
    #[command(subcommand)]
    Request(RequestCmd),
    /// Approve a pending request with your operator key or an `ssh-keygen -Y sign` signature.
    Approve(ApproveArgs),
    /// Admin operations under the admin policy: how many admins must agree, and agreeing.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// The hash-chained audit log: list, show, verify, export (JSON lines).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Webhooks: where the leader sends signed notifications of requests awaiting approval,
    /// approved, denied, signed, failed or expired; and this node's deliveries.
    #[command(subcommand)]
    Webhook(webhook::WebhookCmd),
    /// Print version and build information.
    Version(OutputArgs),
    /// Measure signing: latency and throughput of local clusters (2-of-3, 3-of-5, 5-of-7),
    /// also with one signer killed, next to in-process FROST and ed25519-dalek on this machine.
    Bench(BenchArgs),
    /// Print a shell completion script for bash, zsh or fish to stdout.
    #[command(long_about = surface::COMPLETION_ABOUT)]
    Completion(CompletionArgs),
    /// Print the manual page (roff) to stdout, or write one page per subcommand to a directory.
    #[command(long_about = surface::MAN_ABOUT)]
    Man(ManArgs),
}

/// `synod completion SHELL`.
#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `synod man [--out-dir DIR]`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write synod.1 and a page per subcommand (synod-key.1, synod-key-create.1, ...) here,
    /// creating the directory; without it, print the top-level page to stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// With --out-dir: how to report the pages written.
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Start a node from its configuration file and serve until SIGINT/SIGTERM.
    Start {
        /// Path to node.toml.
        #[arg(long, env = "SYNOD_CONFIG")]
        config: PathBuf,
        /// How a failure to start is printed (the node's log has its own format, `log_format`
        /// in node.toml).
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Write the node's backup (online, as an admin): its sealed secrets, still sealed under its KEK
    /// (key shares per key, version and generation; the KEK check; the passphrase salt), the
    /// committed state (its snapshot and the log after it), and what they are (cluster, node, KEK
    /// backend, keys, the log index it was taken at), signed by the node. Never a nonce, a vote or
    /// plaintext. The node is the one at --addr.
    Backup {
        /// A new file (never overwritten), written with mode 0600.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restore a node from its backup into an empty data directory, or with --verify run the
    /// restore drill: unseal every share with this node's KEK and check it against the verifying
    /// share the cluster had committed, touching nothing. A backup of another node, of another
    /// cluster, or altered, is refused, saying which. After a restore, start the node: it votes
    /// only once a majority of the other voters has answered, catches up, drops stale generations
    /// and reports missing shares for `key repair`.
    Restore {
        /// The backup file from `synod node backup`.
        file: PathBuf,
        /// The restored node's node.toml: its node id, CA, KEK and data directory.
        #[arg(long, env = "SYNOD_CONFIG")]
        config: PathBuf,
        /// Only check the backup against this node's KEK and CA; write nothing.
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Call a peer over mutual-TLS QUIC with this node's certificate: checks
    /// certificates, addresses and membership without touching Raft.
    Ping {
        /// Path to this node's node.toml.
        #[arg(long, env = "SYNOD_CONFIG")]
        config: PathBuf,
        /// The peer as ID=RAFT_ADDR.
        #[arg(long)]
        peer: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Keep the cluster's files here (reused on the next run); a temporary directory otherwise.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where each node's key-encryption key lives: a 0600 file, or its own SoftHSM2 token.
    #[arg(long, value_enum, default_value_t = DevHsm::None)]
    pub hsm: DevHsm,
    /// Table: set-up progress and the client settings for people. JSON: one line on stdout once
    /// the cluster is up (cluster.json and the client settings), progress as JSON lines on stderr.
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DevHsm {
    /// A KEK file per node (mode 0600).
    None,
    /// A SoftHSM2 token per node (needs the Debian package softhsm2).
    Softhsm,
}

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Create a cluster CA (ca.crt, ca.key) in a new directory.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Common name of the CA certificate.
        #[arg(long, default_value = "synod cluster CA")]
        name: String,
        /// Protect ca.key with a passphrase (from SYNOD_CA_PASSPHRASE, or asked twice on the terminal).
        #[arg(long)]
        protect: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Issue a certificate signed by the CA, or renew one (--renew).
    Issue(IssueArgs),
}

/// `synod ca issue node|client ...` issues a new certificate and key;
/// `synod ca issue --renew FILE --ca-dir DIR` renews an existing one in place.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct IssueArgs {
    #[command(subcommand)]
    pub kind: Option<IssueCmd>,
    /// Renew this certificate file (node-<id>.crt or client-<name>.crt): same subject, SANs
    /// and key, a new serial and validity. The old file is kept as <file>.prev and the key
    /// file is not touched, so a node picks the new certificate up on SIGHUP without a
    /// restart. To change the key, issue a new certificate instead.
    #[arg(long, value_name = "CERT_FILE")]
    pub renew: Option<PathBuf>,
    /// Directory holding ca.crt and ca.key (with --renew).
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Validity of the renewed certificate in days (default: 365 for a node, 90 for a client;
    /// at most 398).
    #[arg(long)]
    pub days: Option<u32>,
    /// Output format (with --renew).
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum IssueCmd {
    /// A node certificate (CN synod-node-<id>); its holder may join as that node.
    Node {
        #[arg(long)]
        id: NodeId,
        /// Extra subject alternative names: the IPs or DNS names clients use for this node.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where to write node-<id>.crt and node-<id>.key.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days (at most 398); renew with `synod ca issue --renew`.
        #[arg(long, default_value_t = synod_node::pki::NODE_VALIDITY_DAYS_DEFAULT)]
        days: u32,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// A client certificate (CN synod-client-<name>) for the CLI or an application.
    Client {
        #[arg(long)]
        name: String,
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Validity in days (at most 398); renew with `synod ca issue --renew`.
        #[arg(long, default_value_t = synod_node::pki::CLIENT_VALIDITY_DAYS_DEFAULT)]
        days: u32,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// A P-256 HTTPS certificate for a node's approver console (`[console]` in node.toml).
    ///
    /// Browsers do not verify Ed25519 certificates, and the cluster CA is Ed25519, so console
    /// certificates come from a separate P-256 "web CA": web-ca.pem and web-ca.key, made in
    /// --ca-dir beside ca.crt the first time (its key protected by the CA passphrase when
    /// ca.key has one). Nodes never trust the web CA; browsers must: import web-ca.pem into
    /// their trust store (or issue the console certificate from your organisation's PKI
    /// instead). Writes console-NAME.crt and console-NAME.key (mode 0600) into --out.
    ///
    /// Example: synod ca issue console node-1 --dns localhost --ca-dir ca --out certs
    Console {
        /// A name for the certificate's files and common name (synod-console-NAME),
        /// e.g. the node's name; 1 to 64 of A-Z a-z 0-9 . _ -
        name: String,
        /// A DNS name browsers open the console by (repeat for several). Passkeys work
        /// for domains only, so an IP address is refused: the name must be the cluster's
        /// WebAuthn RP ID or a subdomain of it (`synod cluster webauthn set`), and
        /// https://NAME:PORT one of its origins. Use localhost in development.
        #[arg(long = "dns", required = true)]
        dns: Vec<String>,
        /// Directory holding ca.crt and ca.key; web-ca.pem and web-ca.key live there too.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where to write console-NAME.crt and console-NAME.key.
        #[arg(long, visible_alias = "out-dir")]
        out: PathBuf,
        /// Validity in days (at most 398, which browsers require).
        #[arg(long, default_value_t = synod_node::pki::CONSOLE_VALIDITY_DAYS_DEFAULT)]
        days: u32,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum KekCmd {
    /// Write a new random 256-bit KEK to a file (mode 0600). For development only.
    GenerateFile {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Create a non-extractable AES-256 KEK inside a PKCS#11 token.
    Pkcs11Keygen {
        /// The PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
        #[arg(long)]
        module: PathBuf,
        #[arg(long)]
        token_label: String,
        #[arg(long, default_value = "synod-kek")]
        key_label: String,
        /// A file holding the user PIN (mode 0600); otherwise SYNOD_PKCS11_PIN.
        #[arg(long)]
        pin_file: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Re-seal every secret of a stopped node's data directory under a new KEK, so the old KEK
    /// can be destroyed, which makes every earlier copy of the data directory unreadable.
    /// Opens the current KEK as `synod node start` does and writes everything in one atomic,
    /// synced batch. Then point node.toml's [kek] at the new KEK, start the node, and destroy
    /// the old KEK.
    Rotate {
        /// The stopped node's node.toml; its [kek] is the current KEK.
        #[arg(long, env = "SYNOD_CONFIG")]
        config: PathBuf,
        /// Move to this KEK file, made first with `synod kek generate-file`.
        #[arg(
            long,
            value_name = "PATH",
            conflicts_with = "new_kek_config",
            required_unless_present = "new_kek_config"
        )]
        new_kek_file: Option<PathBuf>,
        /// Move to the KEK of this file's [kek] table, written as in node.toml (file, passphrase
        /// or pkcs11; a copy of node.toml with another [kek] works too). A new passphrase is read
        /// from the variable its `env` names (use another than the current one's) or asked for.
        #[arg(long, value_name = "FILE")]
        new_kek_config: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum OperatorCmd {
    /// Generate an Ed25519 operator key (PKCS#8 PEM, mode 0600) and print its public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print the public key of an operator key file.
    Show {
        #[arg(long, env = "SYNOD_OPERATOR_KEY")]
        key: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Register an operator (an admin operation): an Ed25519 key and/or an OpenSSH key, and roles.
    Add {
        /// The operator's name (1 to 64 of A-Z a-z 0-9 . _ -).
        name: String,
        /// Ed25519 public key: 64 hex characters, a public key PEM, or the operator's key file.
        #[arg(long)]
        key: Option<String>,
        /// OpenSSH public key (ssh-ed25519 or sk-ssh-ed25519@openssh.com): a .pub file or the line itself.
        #[arg(long)]
        ssh_key: Option<String>,
        /// Roles, comma-separated: requester, approver, admin, auditor.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<synod_proto::authz::Role>,
        /// How many of this operator's requests may wait at once (default 64;
        /// at most the cluster's 1024): raise it for a CI requester that bursts.
        #[arg(long)]
        pending_max: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove an operator (an admin operation); its approvals stop counting.
    Remove {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List operators and their roles.
    List(ClientArgs),
    /// Passkeys for the approver console: list them, approve one an operator
    /// registered, or remove one (admin operations).
    #[command(subcommand)]
    Passkey(passkey::PasskeyCmd),
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Initialise a cluster once: fixes the genesis admins and the first members.
    Init {
        /// A genesis member as ID=RAFT_ADDR,API_ADDR (repeat for each).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// A genesis admin's public key (hex); repeat. Defaults to the signing operator's key.
        #[arg(long = "admin")]
        admins: Vec<String>,
        /// The cluster's name, a readable label (random when omitted). The id every
        /// command names is derived from the genesis, so two clusters with the same
        /// name and admins still refuse each other's commands.
        #[arg(long)]
        cluster_id: Option<String>,
        /// The shortest waiting period `synod key destroy` may be given in this cluster,
        /// fixed for its life (e.g. 7d, 10m). Defaults to 7 days; shorter is for development
        /// and test clusters.
        #[arg(long, value_parser = humantime::parse_duration)]
        key_destroy_wait_min: Option<std::time::Duration>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Authorise a node to join (signed by an admin); the leader adds it once it is running.
    AddMember {
        #[arg(long)]
        id: NodeId,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        api_addr: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a node from the cluster (signed by an admin).
    RemoveMember {
        #[arg(long)]
        id: NodeId,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The relying party (RP ID and origins) every node judges passkeys by.
    #[command(subcommand)]
    Webauthn(passkey::WebAuthnCmd),
}

#[derive(Subcommand, Debug)]
pub enum KvCmd {
    /// Write KEY=VALUE (signed by the operator key).
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read a key from the addressed node's applied state.
    Get {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List keys and their versions.
    List(ClientArgs),
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Generate a key by distributed key generation: no machine ever holds it whole.
    /// Needs every participant up; shows progress.
    Create {
        /// The key's name (1 to 64 of A-Z a-z 0-9 . _ -).
        name: String,
        /// Signers needed for a signature; defaults to a majority of the participants (at least 2).
        #[arg(long, short = 't')]
        threshold: Option<u16>,
        /// Nodes that hold a share, comma-separated; defaults to every member.
        #[arg(long, value_delimiter = ',')]
        participants: Vec<NodeId>,
        #[command(flatten)]
        policy: KeyPolicyArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Import an existing Ed25519 key (migration): split on this machine, each share sent
    /// over TLS to its own node; the whole key never reaches a node.
    Import {
        /// The key's name.
        name: String,
        /// The Ed25519 private key, PKCS#8 PEM (e.g. from `openssl genpkey -algorithm ed25519`).
        #[arg(long = "key-file")]
        key_file: PathBuf,
        #[arg(long, short = 't')]
        threshold: Option<u16>,
        #[arg(long, value_delimiter = ',')]
        participants: Vec<NodeId>,
        #[command(flatten)]
        policy: KeyPolicyArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a new version of a key by a fresh distributed key generation (admin quorum).
    /// When it is active it becomes the primary: requests naming only the key use it,
    /// and the version it replaces keeps signing requests that name it (`synod sign
    /// --key-version`) until the overlap ends, then it is retired and only verifies.
    /// Rotation is how a key's threshold or participants change.
    Rotate {
        /// The key's name.
        name: String,
        /// Signers needed for a signature; the current version's when omitted.
        #[arg(long, short = 't')]
        threshold: Option<u16>,
        /// Nodes that hold a share of the new version, comma-separated; the current
        /// version's when omitted.
        #[arg(long, value_delimiter = ',')]
        participants: Vec<NodeId>,
        /// How long the replaced version still signs requests that name it, e.g. 24h, 0s
        /// (at once, after a suspected leak); at most 30d.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
        overlap: std::time::Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Refresh a key's shares (admin quorum): every participant gets a new share of the
    /// same key, so the public key and every signature stay valid while shares that
    /// leaked before the refresh stop combining with the new ones. Needs every
    /// participant up; signing continues meanwhile; shows progress. Each node deletes
    /// its old share once the new generation is current (copies in backups or old
    /// disks are not reached: rotate the KEK that sealed them, `synod kek rotate`).
    Refresh {
        /// The key's name (its primary version is refreshed).
        name: String,
        /// Participants that get no share of the new generation, comma-separated: how a node
        /// leaves a key (before `synod cluster remove-member`) with its public key unchanged.
        /// They need not be up. At least the threshold of participants must remain.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["every", "no_schedule"])]
        remove: Vec<NodeId>,
        /// Instead of refreshing now, refresh the key every this long from now on (e.g. 30d,
        /// 90d; at least 10s): at each due time the leader starts a refresh, and a refresh
        /// that cannot complete is tried again an interval later.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "no_schedule")]
        every: Option<std::time::Duration>,
        /// Stop the scheduled refreshes.
        #[arg(long)]
        no_schedule: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give a node its share of a key (admin quorum): a participant whose data directory lost
    /// its share gets the identical share back, and a member that is not a participant is
    /// enrolled with a new share of the same key (the public key does not change). The
    /// threshold of other participants help; the key is never whole anywhere. Refresh
    /// afterwards (`synod key refresh`) so that a copy of the lost disk stops combining.
    Repair {
        /// The key's name (its primary version).
        name: String,
        /// The node that gets the share.
        #[arg(long)]
        node: NodeId,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List keys with their status and public keys (each version of a key on its own line).
    List(ClientArgs),
    /// A key's signing policy: who may request, how many approvals, tiers.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Make a PKCS#10 certificate signing request signed by the key, for an organisation's CA.
    Csr(formats::cms::CsrArgs),
    /// Make an X.509 certificate for the key (self-signed), for CMS signatures and PDF seals.
    Certificate(formats::cms::CertificateArgs),
    /// Make the key's OpenPGP public key (v4, EdDSA), self-certified by the cluster.
    Openpgp(formats::openpgp::OpenpgpKeyArgs),
    /// Show a key (by name or id) and its versions; with --format, print only its public
    /// key in that format (jwks: every version that still signs, the primary first).
    Show {
        name: String,
        /// Public key format: hex, pem (SPKI, RFC 8410), jwk (RFC 8037), openssh, jwks (a JWK Set,
        /// RFC 7517, with RFC 7638 thumbprints as kid, for EdDSA JWT and webhook verifiers), or
        /// minisign (a public key file for `minisign -V -p`, key id derived from the key).
        #[arg(long)]
        format: Option<synod_proto::keyfmt::PublicKeyFormat>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a key from signing (admin quorum): new requests are refused and its pending
    /// requests fail at once. `synod key enable` puts it back in service.
    Disable {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Let a disabled key sign again (admin quorum).
    Enable {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Schedule a key's destruction after a waiting period (admin quorum). From now on it
    /// signs nothing; until the deadline `--cancel` stops the destruction (the key then
    /// stays disabled). At the deadline every node deletes its shares; the public key,
    /// requests and audit records stay, and the name is never used again.
    Destroy {
        name: String,
        /// The waiting period, e.g. 30d, 7d 12h; 30 days when omitted (at least the minimum fixed
        /// at the cluster's genesis, 7 days unless `cluster init --key-destroy-wait-min` chose
        /// another; at most 365d).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "cancel")]
        after: Option<std::time::Duration>,
        /// Cancel the scheduled destruction instead.
        #[arg(long)]
        cancel: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `synod sign`.
#[derive(Args, Debug)]
pub struct SignArgs {
    /// The key's name.
    pub key: String,
    /// The file to sign: at most 64 KiB as raw, any size as sshsig, minisign, openpgp or cms
    /// (hashed here; only the format's small signed statement of the hash goes to the cluster).
    #[arg(long = "in")]
    pub input: PathBuf,
    #[command(flatten)]
    pub format: formats::args::FormatArgs,
    /// How long to wait for approvals when the key's policy needs them, in seconds (0: fail at
    /// once, naming the request approvers must approve).
    #[arg(long, default_value_t = 0)]
    pub approval_wait_secs: u64,
    /// Idempotency id: a retry with the same id and message returns the same signature;
    /// another message under the same id is refused. Random when omitted.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Why this is signed, recorded with the request.
    #[arg(long)]
    pub purpose: Option<String>,
    /// The environment the signature is for (a policy may restrict it).
    #[arg(long)]
    pub environment: Option<String>,
    /// A declared attribute the policy may tier on, NAME=VALUE (repeat).
    #[arg(long = "attr")]
    pub attrs: Vec<String>,
    /// Sign with this version of the key instead of its primary: allowed while a
    /// rotation's overlap lets the older version finish (see `synod key show`).
    #[arg(long)]
    pub key_version: Option<u32>,
    /// Write the signature here (raw 64 bytes unless --signature-format says otherwise).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// raw, hex or base64 (default: hex on stdout, raw into --out).
    #[arg(long)]
    pub signature_format: Option<synod_proto::keyfmt::SignatureFormat>,
    /// How long to wait for the signature, in seconds.
    #[arg(long, default_value_t = 30)]
    pub wait_secs: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `synod verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A cluster key's name: the public keys of its versions are fetched from the cluster,
    /// and the one that verifies is named.
    #[arg(long, conflicts_with = "public_key")]
    pub key: Option<String>,
    /// A public key file or text: hex, SPKI PEM, JWK, an OpenSSH ssh-ed25519 line or a minisign
    /// public key (offline).
    #[arg(long)]
    pub public_key: Option<String>,
    /// The signed file (for jws and jwt: the token).
    #[arg(long = "in")]
    pub input: PathBuf,
    /// The signature file: for raw, 64 raw bytes, hex or base64; otherwise the format's own
    /// signature file (.sig, .minisig, .asc, .p7s).
    #[arg(long)]
    pub signature: Option<PathBuf>,
    #[command(flatten)]
    pub format: formats::args::FormatArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The policy a new key starts with. Without one the key signs nothing until
/// an admin sets a policy (`synod key policy set`): a key never starts open by
/// accident. The policy travels in the create command, so under an admin
/// quorum the other admins see it when they agree.
#[derive(Args, Debug, Default, Clone)]
pub struct KeyPolicyArgs {
    /// The key's signing policy, a JSON file as for `synod key policy set`.
    #[arg(long, value_name = "FILE", conflicts_with = "open_policy")]
    pub policy: Option<PathBuf>,
    /// Start with the open policy: any operator with the requester role signs,
    /// no approvals.
    #[arg(long)]
    pub open_policy: bool,
}

/// `synod key policy ...`.
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Replace a key's policy with the one in a JSON file, e.g.
    /// {"approvers": ["alice", "bob"], "approvals_required": 1, "environments": ["prod"],
    ///  "tiers": [{"attribute": "amount", "above": 10000, "approvals_required": 2}]}.
    /// Pending requests of the key fail and must be made again.
    Set {
        name: String,
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a key's policy and its version.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `synod approve`.
#[derive(Args, Debug)]
pub struct ApproveArgs {
    /// The request id.
    pub id: String,
    /// An armored signature of the request's statement made with
    /// `ssh-keygen -Y sign -n synod-approval@v1` (see `synod request statement`).
    #[arg(long)]
    pub ssh_signature: Option<PathBuf>,
    /// The approver's operator name (found from the key when omitted).
    #[arg(long = "as")]
    pub approver: Option<String>,
    /// Approve without asking: for scripts. Without it, `synod approve` shows
    /// what is being approved and asks on the terminal, and refuses when stdin
    /// is not a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Set how many admins must agree to an admin operation (itself an admin operation).
    Policy {
        #[arg(long)]
        approvals: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Agree to a pending admin proposal.
    Approve {
        proposal_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List pending admin proposals.
    Proposals(ClientArgs),
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// List audit records.
    List {
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one record.
    Show {
        seq: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check the chain: every hash, every link, and the node's head; or a file from `audit export`.
    Verify {
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print every record as JSON lines, one record a line (the format `audit verify --file`
    /// reads), whatever -o says; -o decides only how an error is printed.
    Export(ClientArgs),
    /// Ask for a checkpoint now: the audit key threshold-signs the chain's head.
    Checkpoint(ClientArgs),
    /// List checkpoints; with --out-dir, write each signed one as checkpoint-N.msg and .sig
    /// plus audit-key.pem, for `openssl pkeyutl -verify -pubin -rawin`.
    Checkpoints {
        #[arg(long)]
        out_dir: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum RequestCmd {
    /// Ask for a signature; prints the request and whether it awaits approvals.
    Sign {
        /// The key's name.
        key: String,
        /// The file to sign (at most 64 KiB): with --format, the format's to-be-signed bytes
        /// built by your own tooling (an SSHSIG signed-data blob, a JWS signing input, DER
        /// signed attributes, ...), which every node parses as that format.
        #[arg(long = "in")]
        input: PathBuf,
        /// The format the file's bytes are in (raw when omitted); `synod sign --format` builds
        /// them for you.
        #[arg(long, value_parser = |s: &str| s.parse::<synod_proto::format::SignFormat>())]
        format: Option<synod_proto::format::SignFormat>,
        /// minisign: the trusted comment its global signature covers.
        #[arg(long)]
        trusted_comment: Option<String>,
        #[arg(long)]
        request_id: Option<String>,
        #[arg(long)]
        purpose: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        /// A declared attribute the policy may tier on, NAME=VALUE (repeat). Approvers see and sign it.
        #[arg(long = "attr")]
        attrs: Vec<String>,
        /// Sign with this version of the key instead of its primary (while a rotation's
        /// overlap lets it finish).
        #[arg(long)]
        key_version: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait until a request is signed or failed, showing approval progress.
    Wait {
        id: String,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a request's approval statement (the bytes approvers sign) for `ssh-keygen -Y sign`.
    Statement {
        id: String,
        #[arg(long)]
        out: PathBuf,
        /// Write the denial statement instead (for `synod request deny --ssh-signature`).
        #[arg(long)]
        denial: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deny a pending request as one of its approvers: signs its denial statement (with
    /// your operator key, or submits an `ssh-keygen -Y sign` signature of it). Once the
    /// policy's denials_required approvers deny (1 unless set), the request fails.
    Deny {
        id: String,
        /// Why, for the requester and the audit log (at most 1024 printable bytes).
        #[arg(long)]
        reason: String,
        /// An armored signature of the request's denial statement made with
        /// `ssh-keygen -Y sign -n synod-approval@v1` (see `synod request statement --denial`).
        #[arg(long)]
        ssh_signature: Option<PathBuf>,
        /// The approver's operator name (found from the key when omitted).
        #[arg(long = "as")]
        approver: Option<String>,
        /// Deny without asking: for scripts. Without it, the request is shown and the
        /// answer asked on the terminal.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel your own pending request: it fails and is never signed.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the signing requests you may read, newest first: all of them for auditors and
    /// admins, your own as a requester, those of keys whose policy names you as an approver.
    List {
        /// Only requests in this status.
        #[arg(long, value_parser = ["pending", "awaiting_approval", "signed", "failed"])]
        status: Option<String>,
        /// Only requests on this key (its name or id).
        #[arg(long)]
        key: Option<String>,
        /// Only requests awaiting your approval: the key's policy asks you for one and you
        /// have not given it yet.
        #[arg(long)]
        mine_to_approve: bool,
        /// Only the requests you made.
        #[arg(long)]
        mine: bool,
        /// The most requests to show (at most 500).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=500))]
        limit: u64,
        /// Show the requests created below this log index: the `next` a previous page printed.
        #[arg(long)]
        before_index: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a signing request: status, signers, signature.
    Show {
        id: String,
        /// Wait up to this many seconds for a pending request to finish.
        #[arg(long, default_value_t = 0)]
        wait_secs: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `synod bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Key configurations as T-of-N, comma-separated; each gets its own local cluster of N nodes.
    #[arg(long, value_delimiter = ',', default_value = "2-of-3,3-of-5,5-of-7", value_parser = bench::KeyConfig::parse)]
    pub configs: Vec<bench::KeyConfig>,
    /// Concurrent clients, comma-separated: one measured level each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: Vec<u64>,
    /// Signing requests per level (the level ends after this many, not after a time).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
    /// Length of each (random) message to sign, in bytes.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub message_bytes: u64,
    /// Skip the levels run after one non-leader signer is killed (kill -9).
    #[arg(long)]
    pub no_kill: bool,
    /// Sign each command with the operator key inside the timed section, as a real client does.
    /// By default every command is signed (and serialised) before timing, to measure the cluster.
    #[arg(long)]
    pub sign_in_loop: bool,
    /// Seconds each in-process baseline (FROST ceiling, FROST latency, ed25519-dalek) runs.
    #[arg(long, default_value_t = 2.0)]
    pub baseline_secs: f64,
    /// Bench the running cluster that SYNOD_ADDR etc. point at instead of starting local ones:
    /// creates one key per --configs entry (by DKG, on the first N members) and kills nothing.
    #[arg(long)]
    pub target_existing: bool,
    /// With --target-existing: sign with this existing key instead of creating keys.
    #[arg(long, requires = "target_existing")]
    pub key: Option<String>,
    /// Keep each local cluster's directory (configs, node logs) instead of deleting it.
    #[arg(long)]
    pub keep_dir: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and `key: value` lists for people; times in RFC 3339 (UTC).
    #[default]
    Table,
    /// One JSON document on stdout (times as integer milliseconds since the epoch); a failure
    /// as {"errors": [...]} on stderr.
    Json,
}

/// The output format the parsed command line asked for: the `-o` of the
/// innermost subcommand (every `-o` is the same `OutputArgs`, so its id is
/// `output` everywhere), or table for a command without one. `main` reads it
/// before running the command, to print a failure the way the command would
/// have printed its result.
pub fn requested_output(matches: &ArgMatches) -> Output {
    let mut leaf = matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    leaf.try_get_one::<Output>("output").ok().flatten().copied().unwrap_or_default()
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, env = "SYNOD_OUTPUT")]
    pub output: Output,
}

/// How long a signed command stays valid unless `--ttl-secs` says otherwise.
pub const TTL_SECS_DEFAULT: u64 = 300;

/// How the CLI reaches and authenticates to a node.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The node's API address; tried first when `--addrs` names others too.
    #[arg(long, env = "SYNOD_ADDR", default_value = client::ADDR_DEFAULT)]
    pub addr: String,
    /// Node API addresses, comma-separated: the client moves to the next when one cannot
    /// be reached (see `synod_cli::client`).
    #[arg(long, env = "SYNOD_ADDRS", value_delimiter = ',')]
    pub addrs: Vec<String>,
    /// The cluster CA certificate that the node's certificate must chain to.
    #[arg(long, env = "SYNOD_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate issued by the cluster CA.
    #[arg(long, env = "SYNOD_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// Private key of the client certificate.
    #[arg(long, env = "SYNOD_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Operator key that signs commands (PKCS#8 PEM).
    #[arg(long, env = "SYNOD_OPERATOR_KEY")]
    pub operator_key: Option<PathBuf>,
    /// How long a command signed now stays valid, in seconds (`request sign`: 3600 unless set).
    #[arg(long, default_value_t = TTL_SECS_DEFAULT)]
    pub ttl_secs: u64,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The environment variables that may hold secrets for this command line:
/// the default KEK passphrase and PIN variables, and those a node's config
/// names. `main` takes them out of the environment before any thread starts.
pub fn secret_env_names(cli: &Cli) -> Vec<String> {
    let mut names = vec![synod_node::config::PASSPHRASE_ENV_DEFAULT.into(), synod_node::config::PIN_ENV_DEFAULT.into()];
    if let Top::Node(NodeCmd::Start { config, .. } | NodeCmd::Restore { config, .. }) = &cli.command {
        names.extend(synod_node::server::secret_env_names(config));
    }
    if let Top::Kek(KekCmd::Rotate { config, new_kek_config, .. }) = &cli.command {
        names.extend(operator::rotate_secret_env_names(config, new_kek_config.as_deref()));
    }
    names.sort();
    names.dedup();
    names
}

/// What this command hardens: every command drops core dumps and ptrace by
/// other users (an operator key or a CA key may be in memory); a node, which
/// holds unsealed shares for as long as it runs, and `kek rotate` and
/// `node restore` (its drill), which unseal every share of one, also lock
/// their memory.
pub fn hardening_steps(cli: &Cli) -> synod_node::hygiene::HardeningSteps {
    let lock_memory = matches!(
        cli.command,
        Top::Node(NodeCmd::Start { .. } | NodeCmd::Restore { .. }) | Top::Kek(KekCmd::Rotate { .. })
    );
    synod_node::hygiene::HardeningSteps { lock_memory }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Top::Node(NodeCmd::Start { config, .. }) => {
            synod_node::server::run(&config, || {
                rpassword::prompt_password("KEK passphrase: ").map(zeroize::Zeroizing::new)
            })
            .await
        }
        Top::Node(NodeCmd::Ping { config, peer, output }) => {
            let (id, addr) = peer
                .split_once('=')
                .and_then(|(id, addr)| Some((id.parse::<NodeId>().ok()?, addr)))
                .ok_or_else(|| anyhow::anyhow!("--peer {peer:?} is not ID=RAFT_ADDR (e.g. 2=10.0.0.2:7001)"))?;
            let (node_id, cluster_id) = synod_node::server::ping(&config, id, addr).await?;
            match output.output {
                Output::Json => println!("{}", serde_json::json!({ "node_id": node_id, "cluster_id": cluster_id })),
                Output::Table => {
                    println!("node {node_id} answered (cluster {})", cluster_id.as_deref().unwrap_or("not initialised"))
                }
            }
            Ok(())
        }
        Top::Node(NodeCmd::Backup { out, client }) => backup::node_backup(&out, &client).await,
        Top::Node(NodeCmd::Restore { file, config, verify, output }) => {
            backup::node_restore(&file, &config, verify, output.output).await
        }
        Top::Dev(args) => dev::run(args).await,
        Top::Ca(cmd) => operator::ca(cmd),
        Top::Operator(cmd) => authz::operator(cmd).await,
        Top::Kek(cmd) => operator::kek(cmd).await,
        Top::Cluster(cmd) => client::cluster(cmd).await,
        Top::Status(args) => client::status(&args).await,
        Top::Health(args) => client::health(&args).await,
        Top::Kv(cmd) => client::kv(cmd).await,
        Top::Key(cmd) => keys::key(cmd).await,
        Top::Sign(args) => keys::sign(args).await,
        Top::Verify(args) => keys::verify(args).await,
        Top::Agent(args) => formats::agent::run(args).await,
        Top::Seal(args) => formats::cms::seal(args).await,
        Top::Request(cmd) => authz::request(cmd).await,
        Top::Approve(args) => authz::approve(args).await,
        Top::Admin(cmd) => authz::admin(cmd).await,
        Top::Audit(cmd) => authz::audit(cmd).await,
        Top::Webhook(cmd) => webhook::webhook(cmd).await,
        Top::Bench(args) => bench::run(args).await,
        Top::Completion(args) => surface::completion(args.shell),
        Top::Man(args) => surface::man(args.out_dir.as_deref(), args.output.output),
        Top::Version(args) => {
            let info = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "faults": synod_node::faults::available(),
            });
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&info)?),
                Output::Table => println!("synod {}", env!("CARGO_PKG_VERSION")),
            }
            Ok(())
        }
    }
}
