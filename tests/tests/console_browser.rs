//! The approver console in a real browser: headless Chromium (Debian's, driven by Selenium
//! through tests/browser/console.py) with a virtual passkey per approver, against a cluster of
//! real node processes that serve the console over HTTPS with a P-256 certificate from the web
//! CA. Passkeys are registered in the browser and approved by the admin; each approver logs in,
//! finds `treasury`'s request with its amount and approves it with the passkey; the request is
//! signed and OpenSSL verifies the signature. The two approvals are then read back from the
//! Raft log (located through the audit log) and verified offline as WebAuthn assertions over
//! the statement's SHA-256, with code independent of the nodes' verifier. The same run takes
//! the console's screenshots (docs/console/*.png with `SYNOD_SCREENSHOTS=docs/console`).
//!
//! Without Chromium the test says so and passes, unless `SYNOD_REQUIRE_BROWSER` is set (as
//! scripts/test does, after installing it): then a missing browser fails it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use p256::ecdsa::signature::Verifier;
use serde_json::Value;
use sha2::{Digest, Sha256};
use synod_node::store::{SledStore, Store, Tree};
use synod_proto::api::RequestInfo;
use synod_proto::authz::{approval_bytes, ApprovalSignature};
use synod_proto::raft::LogEntry;
use synod_proto::{Command as SynodCommand, TypeConfig};
use synod_tests::{ok, openssl_verifies, wait_for, Cluster, Options};

/// Debian's chromedriver, which Selenium is told to use so that nothing is downloaded.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The request the approvers approve, and what it declares.
const REQUEST_ID: &str = "treasury-payout-1";
const AMOUNT: &str = "250000";
/// How long the browser may take for one step (a page, a ceremony, a signature) on a busy
/// machine before the test gives up; the script has its own, shorter, waits inside a step.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a read may take to show a write sent through another node (reads are local).
const CONVERGE: Duration = Duration::from_secs(60);

#[test]
fn console_browser_passkeys_approve_a_request_and_the_approvals_verify_offline() {
    if !browser_installed() {
        assert!(
            std::env::var_os("SYNOD_REQUIRE_BROWSER").is_none(),
            "SYNOD_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing: \
             apt-get install chromium chromium-driver libnss3-tools (scripts/test installs them)"
        );
        eprintln!(
            "SKIPPED console_browser: {CHROMIUM} or {CHROMEDRIVER} is missing; install chromium, chromium-driver \
             and libnss3-tools, and pip install selenium (scripts/test does), or set SYNOD_REQUIRE_BROWSER=1 \
             to make this a failure"
        );
        return;
    }
    let mut consoles = Consoles::start();
    let cluster = &consoles.cluster;
    let via = consoles.browser_node;
    let origin = consoles.origins[&via].clone();
    setup_treasury(cluster);

    // The browser part: registration, the admin's approval of each passkey, logins, approvals.
    let shots = Screenshots::new();
    let mut browser = Browser::start(&origin, &cluster.path("ca/web-ca.pem"), shots.dir());
    let mut fingerprints = BTreeMap::new();
    let mut shown_digests = BTreeMap::new();
    loop {
        let event = browser.next(&shots);
        let name = event["operator"].as_str().unwrap_or_default().to_string();
        match event["event"].as_str().unwrap_or_default() {
            "registered" => {
                fingerprints.insert(name, event["fingerprint"].as_str().expect("a fingerprint").to_string());
            }
            "waiting" if event["for"] == "passkeys" => {
                approve_passkeys(cluster, via, &fingerprints);
                browser.go_on();
            }
            "logged_in" => {
                // Logging in is an assertion too, but over a login challenge: it approves nothing.
                logged_in_approves_nothing(cluster, via, &name);
            }
            "waiting" if event["for"] == "login_checked" => browser.go_on(),
            "opened" => {
                shown_digests.insert(name, event["statement_sha256"].as_str().expect("a statement hash").to_string());
            }
            "approved" => eprintln!("{name} approved: {}", event["message"]),
            "signed" => {}
            "done" => break,
            "failed" => shots.fail(&format!("the browser script failed: {}", event["error"])),
            other => panic!("unexpected event {other:?} from the browser script: {event}"),
        }
    }
    browser.finish(&shots);
    assert_eq!(fingerprints.len(), 2, "{fingerprints:?}");
    assert_eq!(shown_digests.len(), 2, "each approver opened the request: {shown_digests:?}");

    // The request is signed on every node, and OpenSSL verifies the signature.
    let info = signed_everywhere(cluster);
    verify_with_openssl(cluster, &info);

    // The page showed the hash of exactly the statement the cluster knows.
    let cluster_id = cluster_id(cluster);
    let statement = approval_bytes(&info.approval_statement(&cluster_id));
    let digest = hex::encode(Sha256::digest(&statement));
    for (name, shown) in &shown_digests {
        assert_eq!(shown, &digest, "the console showed {name} another statement's SHA-256");
    }

    // Both approvals, as committed, verify offline as WebAuthn assertions over that statement.
    let passkeys = passkeys(cluster);
    let approvals = approvals_from_the_log(&mut consoles, 3);
    let approvers: Vec<&str> = approvals.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(approvers, ["alice", "bob"], "the log holds one approval by each, in order");
    for (name, assertion) in &approvals {
        let key = passkeys.get(&(name.clone(), assertion.credential_id.clone())).unwrap_or_else(|| {
            panic!("{name}'s approval names credential {}, not a passkey of theirs", assertion.credential_id)
        });
        verify_assertion_offline(assertion, key, &Sha256::digest(&statement), &origin)
            .unwrap_or_else(|e| panic!("{name}'s approval does not verify as a WebAuthn assertion: {e}"));
        // The same checks refuse the assertion for another statement, or with its
        // authenticator data changed (here the signature counter): they are not vacuous.
        let other = Sha256::digest(b"another request's statement");
        assert!(verify_assertion_offline(assertion, key, &other, &origin).is_err());
        let mut altered = assertion.clone();
        let mut data = b64url(&altered.authenticator_data);
        data[36] ^= 1;
        altered.authenticator_data = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
        let err = verify_assertion_offline(&altered, key, &Sha256::digest(&statement), &origin).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
    }
    shots.publish();
}

fn browser_installed() -> bool {
    Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()
}

/// A 3-node cluster whose nodes each serve the console on https://localhost:<port>, the
/// relying party set to `localhost` and those origins.
struct Consoles {
    cluster: Cluster,
    /// Each node's console origin.
    origins: BTreeMap<u64, String>,
    /// The node whose console the browser opens (not node 3, which the test stops at the end).
    browser_node: u64,
}

impl Consoles {
    fn start() -> Consoles {
        let mut cluster = Cluster::prepare(Options::default());
        let ca = cluster.path("ca").display().to_string();
        let certs = cluster.path("certs").display().to_string();
        ok(&synod_tests::run_synod(
            &["ca", "issue", "console", "localhost", "--dns", "localhost", "--ca-dir", &ca, "--out", &certs],
            &[],
        ));
        assert!(cluster.path("ca/web-ca.pem").exists(), "`synod ca issue console` made no web CA next to the CA");
        let (certificate, key) =
            (cluster.path("certs/console-localhost.crt"), cluster.path("certs/console-localhost.key"));
        for id in 1..=3 {
            cluster.add_node_files(id);
            cluster.add_console(id, &certificate, &key);
        }
        // A node whose console port was taken meanwhile moves it, so the origins are read after.
        cluster.start_new_nodes(&[1, 2, 3]);
        let origins: BTreeMap<u64, String> =
            (1..=3).map(|id| (id, cluster.console_origin(id).expect("a console in the config"))).collect();
        let args = cluster.init_args();
        ok(&cluster.synod(1, &args.iter().map(String::as_str).collect::<Vec<_>>()));
        cluster.wait_leader();
        let mut set = vec!["cluster", "webauthn", "set", "--rp-id", "localhost"];
        for origin in origins.values() {
            set.extend(["--origin", origin.as_str()]);
        }
        ok(&cluster.synod(1, &set));
        Consoles { cluster, origins, browser_node: 1 }
    }
}

/// `treasury`, a 2-of-3 key whose policy needs both alice and bob; dave asks it to sign a
/// payout declaring its amount.
fn setup_treasury(cluster: &Cluster) {
    ok(&cluster.synod(1, &["key", "create", "treasury", "-t", "2"]));
    let keys = cluster.add_operators(&[("alice", "approver"), ("bob", "approver"), ("dave", "requester")]);
    let policy = cluster.path("treasury-policy.json");
    std::fs::write(
        &policy,
        r#"{"requesters": ["dave"], "approvers": ["alice", "bob"], "approvals_required": 2, "environments": ["prod"]}"#,
    )
    .unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", "treasury", "--file", policy.to_str().unwrap()]));
    let message = cluster.path("payout.txt");
    std::fs::write(&message, "pay 250000 EUR to ACME GmbH, invoice 2026-0412\n").unwrap();
    let args = [
        "request",
        "sign",
        "treasury",
        "--in",
        message.to_str().unwrap(),
        "--request-id",
        REQUEST_ID,
        "--purpose",
        "supplier payout",
        "--environment",
        "prod",
        "--attr",
        &format!("amount={AMOUNT}"),
        "-o",
        "json",
    ];
    let request: Value = serde_json::from_str(&ok(&cluster.synod_as(1, &keys["dave"], &args))).unwrap();
    assert_eq!(request["status"], "awaiting_approval", "{request}");
}

/// The admin approves each passkey by the fingerprint the console showed its owner, and waits
/// until the console's node knows them (reads are local).
fn approve_passkeys(cluster: &Cluster, via: u64, fingerprints: &BTreeMap<String, String>) {
    for (name, fingerprint) in fingerprints {
        ok(&cluster.synod(1, &["operator", "passkey", "approve", name, fingerprint]));
    }
    wait_for("the console's node to know the approved passkeys", CONVERGE, || {
        let list: Value =
            serde_json::from_str(&ok(&cluster.synod(via, &["operator", "passkey", "list", "-o", "json"]))).ok()?;
        let approved = |name: &str, fingerprint: &str| {
            list.as_array()
                .into_iter()
                .flatten()
                .any(|row| row["operator"] == name && row["state"] == "approved" && row["fingerprint"] == fingerprint)
        };
        fingerprints.iter().all(|(name, fingerprint)| approved(name, fingerprint)).then_some(())
    });
}

/// `name` is logged in but has not approved: on every node the request holds the first
/// approver's approval only and still waits, and the audit log holds that one approval.
fn logged_in_approves_nothing(cluster: &Cluster, via: u64, name: &str) {
    for id in [via, 2, 3] {
        // Reads are local: a node may not have applied alice's approval yet.
        let info = wait_for(&format!("node {id} to hold alice's approval"), CONVERGE, || {
            let info = request(cluster, id);
            (!info.approvals.is_empty()).then_some(info)
        });
        assert_eq!(info.approvals, ["alice"], "node {id}: {name} approved by logging in? {info:?}");
        assert_eq!(info.status, synod_proto::api::RequestStatus::AwaitingApproval, "node {id}: {info:?}");
        assert_eq!(info.approval_progress[0].split(' ').next(), Some("1/2"), "node {id}: {info:?}");
    }
    assert_eq!(approval_records(cluster).len(), 1, "the audit log holds an approval nobody gave");
}

/// The request as node `id` sees it.
fn request(cluster: &Cluster, id: u64) -> RequestInfo {
    serde_json::from_str(&ok(&cluster.synod(id, &["request", "show", REQUEST_ID, "-o", "json"]))).expect("request JSON")
}

fn cluster_id(cluster: &Cluster) -> String {
    let status: Value = serde_json::from_str(&ok(&cluster.synod(1, &["status", "-o", "json"]))).unwrap();
    status["cluster_id"].as_str().expect("a cluster id").to_string()
}

/// Waits until every node holds the request signed; returns node 1's view of it.
fn signed_everywhere(cluster: &Cluster) -> RequestInfo {
    for id in [2, 3, 1] {
        wait_for(&format!("node {id} to hold {REQUEST_ID} signed"), CONVERGE, || {
            let info = request(cluster, id);
            (info.status == synod_proto::api::RequestStatus::Signed).then_some(())
        });
    }
    let info = request(cluster, 1);
    assert_eq!(info.approvals, ["alice", "bob"], "{info:?}");
    info
}

fn verify_with_openssl(cluster: &Cluster, info: &RequestInfo) {
    let pem = cluster.path("treasury.pub.pem");
    std::fs::write(&pem, ok(&cluster.synod(1, &["key", "show", "treasury", "--format", "pem"]))).unwrap();
    let signature = cluster.path("payout.sig");
    std::fs::write(&signature, hex::decode(info.signature.as_deref().expect("a signature")).unwrap()).unwrap();
    assert!(
        openssl_verifies(&pem, &cluster.path("payout.txt"), &signature),
        "OpenSSL does not verify treasury's signature of the payout"
    );
}

/// The audit records of the request's applied approvals.
fn approval_records(cluster: &Cluster) -> Vec<Value> {
    let audit: Value =
        serde_json::from_str(&ok(&cluster.synod(1, &["audit", "list", "--limit", "1000", "-o", "json"]))).unwrap();
    audit
        .as_array()
        .expect("audit records")
        .iter()
        .filter(|r| r["kind"] == "approve" && r["request_id"] == REQUEST_ID && r["result"] == "applied")
        .cloned()
        .collect()
}

/// The approvals the audit log lists, read from node `id`'s Raft log at the indices the audit
/// records name (after stopping the node, whose store is then ours to open): approver and
/// passkey assertion, in log order.
fn approvals_from_the_log(consoles: &mut Consoles, id: u64) -> Vec<(String, synod_proto::webauthn::Assertion)> {
    let records = approval_records(&consoles.cluster);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(consoles.cluster.stop(id), "node {id} stops cleanly");
    let store = SledStore::open(&consoles.cluster.nodes[&id].dir.join("data/store")).expect("the node's store opens");
    records
        .iter()
        .map(|record| {
            let index = record["index"].as_u64().expect("an audit record names its log index");
            // An entry is stored in chunks keyed by its index and a chunk number.
            let chunks = store
                .scan(Tree::Log, &index.to_be_bytes(), Some(&(index + 1).to_be_bytes()), usize::MAX)
                .expect("scan the log");
            let bytes: Vec<u8> = chunks.into_iter().flat_map(|(_, chunk)| chunk).collect();
            let entry: openraft::Entry<TypeConfig> = serde_json::from_slice(&bytes).expect("a log entry");
            let openraft::EntryPayload::Normal(LogEntry { command, .. }) = entry.payload else {
                panic!("log entry {index} holds no command");
            };
            let envelope = command.verify().expect("the committed command's signature verifies");
            match envelope.command {
                SynodCommand::Approve { request_id, approver, signature } => {
                    assert_eq!(request_id, REQUEST_ID);
                    let ApprovalSignature::WebAuthn { .. } = &signature else {
                        panic!("{approver}'s approval is not a passkey assertion: {signature:?}");
                    };
                    (approver, signature.assertion().expect("a passkey approval"))
                }
                other => panic!("log entry {index} is {other:?}, not the approval the audit log names"),
            }
        })
        .collect()
}

/// Every approved passkey's COSE public key by (operator, credential id), from the state.
fn passkeys(cluster: &Cluster) -> BTreeMap<(String, String), Vec<u8>> {
    let list: Value = serde_json::from_str(&ok(&cluster.synod(1, &["operator", "list", "-o", "json"]))).unwrap();
    let mut keys = BTreeMap::new();
    for operator in list["operators"].as_array().expect("operators") {
        for passkey in operator["passkeys"].as_array().into_iter().flatten() {
            let public = b64url(passkey["public_key"].as_str().expect("a COSE key"));
            let name = operator["name"].as_str().unwrap().to_string();
            keys.insert((name, passkey["credential_id"].as_str().unwrap().to_string()), public);
        }
    }
    keys
}

fn b64url(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).expect("base64url")
}

/// Checks a WebAuthn assertion as a relying party would (W3C WebAuthn level 2, 7.2), written
/// here from the specification rather than with the nodes' verifier: the client data names
/// `webauthn.get`, the challenge and the origin; the authenticator data the RP ID `localhost`,
/// user presence and user verification; and the ES256 signature over `authenticatorData ||
/// SHA-256(clientDataJSON)` verifies under the passkey's COSE key.
fn verify_assertion_offline(
    assertion: &synod_proto::webauthn::Assertion,
    cose_key: &[u8],
    challenge: &[u8],
    origin: &str,
) -> Result<(), String> {
    let client_data_json = b64url(&assertion.client_data_json);
    let client_data: Value = serde_json::from_slice(&client_data_json).map_err(|e| format!("client data: {e}"))?;
    if client_data["type"] != "webauthn.get" {
        return Err(format!("client data type {}", client_data["type"]));
    }
    if client_data["challenge"].as_str().map(b64url).as_deref() != Some(challenge) {
        return Err(format!("challenge {} is not the statement's SHA-256", client_data["challenge"]));
    }
    if client_data["origin"] != origin {
        return Err(format!("origin {} is not {origin}", client_data["origin"]));
    }
    let authenticator_data = b64url(&assertion.authenticator_data);
    if authenticator_data.len() < 37 {
        return Err("authenticator data shorter than 37 bytes".into());
    }
    if authenticator_data[..32] != Sha256::digest(b"localhost")[..] {
        return Err("the RP ID hash is not SHA-256(\"localhost\")".into());
    }
    let flags = authenticator_data[32];
    if flags & 0x01 == 0 || flags & 0x04 == 0 {
        return Err(format!("flags {flags:#04x} lack user presence (0x01) or user verification (0x04)"));
    }
    let key = es256_key(cose_key)?;
    let signature = p256::ecdsa::DerSignature::from_bytes(&b64url(&assertion.signature))
        .map_err(|e| format!("the signature is not DER ECDSA: {e}"))?;
    let mut signed = authenticator_data;
    signed.extend_from_slice(&Sha256::digest(&client_data_json));
    key.verify(&signed, &signature).map_err(|e| format!("the ES256 signature does not verify: {e}"))
}

/// A COSE_Key (RFC 9053) of kty EC2, alg ES256, crv P-256 as a P-256 verifying key.
fn es256_key(cose: &[u8]) -> Result<p256::ecdsa::VerifyingKey, String> {
    let map: ciborium::Value = ciborium::from_reader(cose).map_err(|e| format!("COSE key: {e}"))?;
    let entries = map.as_map().ok_or("the COSE key is not a CBOR map")?;
    let field = |label: i64| {
        entries.iter().find(|(k, _)| k.as_integer().is_some_and(|i| i128::from(i) == i128::from(label))).map(|(_, v)| v)
    };
    let int = |label: i64| field(label).and_then(|v| v.as_integer()).map(i128::from);
    if int(1) != Some(2) || int(3) != Some(-7) || int(-1) != Some(1) {
        return Err(format!("not an ES256 P-256 COSE key: kty {:?}, alg {:?}, crv {:?}", int(1), int(3), int(-1)));
    }
    let coordinate = |label: i64| field(label).and_then(|v| v.as_bytes()).filter(|b| b.len() == 32);
    let (x, y) = (coordinate(-2).ok_or("no 32-byte x")?, coordinate(-3).ok_or("no 32-byte y")?);
    let mut point = vec![0x04];
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|e| format!("the COSE key's point: {e}"))
}

/// Where the script saves its screenshots: a temporary directory, removed after a passing run
/// and kept (and named) after a failing one, with the failing page; `SYNOD_SCREENSHOTS`, when
/// set, receives copies of the pictures (the documentation's come from this test's run).
struct Screenshots {
    dir: PathBuf,
    publish_to: Option<PathBuf>,
}

impl Screenshots {
    fn new() -> Screenshots {
        let dir = tempfile::Builder::new().prefix("synod-console-shots-").tempdir().unwrap().keep();
        Screenshots { dir, publish_to: std::env::var_os("SYNOD_SCREENSHOTS").map(PathBuf::from) }
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fails the test, naming the directory with the screenshots and the failing page.
    fn fail(&self, why: &str) -> ! {
        panic!("{why}\n(screenshots and the failing page: {})", self.dir.display());
    }

    /// Copies the screenshots to `SYNOD_SCREENSHOTS`, when set.
    fn publish(&self) {
        let Some(to) = &self.publish_to else { return };
        std::fs::create_dir_all(to).unwrap();
        for name in ["pending.png", "request.png", "approved.png"] {
            std::fs::copy(self.dir.join(name), to.join(name))
                .unwrap_or_else(|e| panic!("cannot copy {name} to {}: {e}", to.display()));
        }
        eprintln!("screenshots written to {}", to.display());
    }
}

impl Drop for Screenshots {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The browser script, run by python3, speaking JSON lines.
struct Browser {
    child: std::process::Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<String>,
}

impl Browser {
    fn start(origin: &str, web_ca: &Path, screenshots: &Path) -> Browser {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/console.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--url", origin, "--request-id", REQUEST_ID, "--amount", AMOUNT, "--approvers", "alice,bob"])
            .arg("--web-ca")
            .arg(web_ca)
            .arg("--screenshots")
            .arg(screenshots)
            // Selenium Manager must not download a driver: Debian's chromedriver is given.
            .env("SE_OFFLINE", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (scripts/test installs it with selenium)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Browser { child, stdin, events }
    }

    /// The script's next event; fails the test when it ends, hangs or says something else.
    fn next(&mut self, shots: &Screenshots) -> Value {
        loop {
            match self.events.recv_timeout(STEP_TIMEOUT) {
                Ok(line) => match serde_json::from_str::<Value>(&line) {
                    Ok(event) => return event,
                    Err(_) => eprintln!("browser script: {line}"),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    shots.fail(&format!("the browser script said nothing for {STEP_TIMEOUT:?}"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    shots.fail(&format!("the browser script ended ({status}) before it was done"));
                }
            }
        }
    }

    /// Tells the waiting script to go on.
    fn go_on(&mut self) {
        writeln!(self.stdin, "go").and_then(|()| self.stdin.flush()).expect("the browser script reads its stdin");
    }

    fn finish(mut self, shots: &Screenshots) {
        let status = self.child.wait().unwrap();
        if !status.success() {
            shots.fail(&format!("the browser script exited with {status}"));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failing test must not leave Chromium behind: SIGTERM lets the script quit the
        // browser and its driver; SIGKILL follows if it does not end.
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
