//! What an approver sees: text a requester chose (purpose, declarations)
//! reaches the terminal with its escape sequences and bidi overrides escaped,
//! in `synod request show` and in the summary `synod approve` shows before it
//! asks; and `synod approve` does not approve unasked when no one can answer.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use synod_tests::{fails, ok, Cluster, Options};

/// Clears the screen: a declaration that could draw another request in place of this one.
const CLEAR_SCREEN: &str = "\x1b[2J";
/// Right-to-left override: `abc\u{202e}gpj.exe` shows as `abcexe.jpg`.
const RLO: &str = "\u{202e}";

fn synod_as(cluster: &Cluster, key: &Path, args: &[&str]) -> std::process::Output {
    let mut env = cluster.env(1);
    env.retain(|(k, _)| *k != "SYNOD_OPERATOR_KEY");
    env.push(("SYNOD_OPERATOR_KEY", key.display().to_string()));
    synod_tests::run_synod(args, &env)
}

/// A 2-node cluster with a 2-of-2 key `vault` that dave may request and alice must approve.
fn setup() -> (Cluster, PathBuf, PathBuf) {
    let cluster = Cluster::start_with(2, Options::default());
    ok(&cluster.synod(1, &["key", "create", "vault", "-t", "2"]));
    let mut paths = Vec::new();
    for (name, roles) in [("alice", "approver"), ("dave", "requester")] {
        let path = cluster.path(&format!("{name}.pem"));
        let out = ok(&cluster.synod(1, &["operator", "keygen", "--out", path.to_str().unwrap(), "-o", "json"]));
        let public: Value = serde_json::from_str(&out).unwrap();
        ok(&cluster
            .synod(1, &["operator", "add", name, "--key", public["public_key"].as_str().unwrap(), "--roles", roles]));
        paths.push(path);
    }
    let policy = cluster.path("policy.json");
    std::fs::write(&policy, r#"{"requesters": ["dave"], "approvers": ["alice"], "approvals_required": 1}"#).unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", "vault", "--file", policy.to_str().unwrap()]));
    let dave = paths.pop().unwrap();
    let alice = paths.pop().unwrap();
    (cluster, alice, dave)
}

/// Asserts that `text` holds the hostile declarations escaped and none of them raw.
fn assert_escaped(text: &str, what: &str) {
    assert!(!text.contains('\x1b') && !text.contains(RLO), "{what} prints raw control characters: {text:?}");
    assert!(text.contains("\\u{1b}[2J"), "{what} lacks the escaped clear-screen: {text}");
    assert!(text.contains("abc\\u{202e}gpj.exe"), "{what} lacks the escaped override: {text}");
    assert!(text.contains("pay\\u{1b}[2J now"), "{what} lacks the escaped purpose: {text}");
}

#[test]
fn approve_display_escapes_hostile_declarations_and_asks_first() {
    // A request whose purpose and declarations carry ESC [2J and U+202E shows them escaped in
    // `request show` and in approve's summary; approve without --yes and without a terminal
    // refuses and approves nothing; with --yes it approves and the request is signed.
    let (cluster, alice, dave) = setup();
    let msg = cluster.path("m.txt");
    std::fs::write(&msg, "transfer 250").unwrap();
    let purpose = format!("pay{CLEAR_SCREEN} now");
    let note = format!("note={CLEAR_SCREEN}all fine");
    let file = format!("file=abc{RLO}gpj.exe");
    let args = ["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--request-id", "r1", "--purpose", &purpose];
    let mut args = args.to_vec();
    args.extend(["--attr", &note, "--attr", &file, "-o", "json"]);
    let request: Value = serde_json::from_str(&ok(&synod_as(&cluster, &dave, &args))).unwrap();
    assert_eq!(request["status"], "awaiting_approval", "{request}");
    // JSON is exact data: the declarations are stored and reported as typed.
    assert_eq!(request["attributes"]["file"], format!("abc{RLO}gpj.exe"), "{request}");

    let shown = ok(&cluster.synod(1, &["request", "show", "r1"]));
    assert_escaped(&shown, "request show");

    let unasked = synod_as(&cluster, &alice, &["approve", "r1"]);
    let err = fails(&unasked);
    assert!(err.contains("pass --yes") && err.contains("stdin is not"), "{err}");
    assert_escaped(&err, "approve's summary");
    for field in ["key:", "message:", "sha256", "purpose:", "environment:", "declared:", "requester:", "policy:"] {
        assert!(err.contains(field), "approve's summary lacks {field}: {err}");
    }
    let still: Value = serde_json::from_str(&ok(&cluster.synod(1, &["request", "show", "r1", "-o", "json"]))).unwrap();
    assert_eq!(still["approvals"], serde_json::json!([]), "approve without --yes approved: {still}");

    let approved = synod_as(&cluster, &alice, &["approve", "r1", "--yes"]);
    let summary = String::from_utf8_lossy(&approved.stderr).into_owned();
    ok(&approved);
    assert_escaped(&summary, "approve --yes's summary");
    let signed = ok(&cluster.synod(1, &["request", "wait", "r1", "--timeout-secs", "60"]));
    assert!(signed.contains("signature:") && !signed.contains('\x1b'), "{signed}");
}

/// Runs `synod approve ID` as `key` on a pseudo-terminal (util-linux `script`), answering `answer`.
fn approve_on_a_terminal(cluster: &Cluster, key: &Path, id: &str, answer: &str) -> std::process::Output {
    use std::io::Write;
    let found = std::process::Command::new("script").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "script (util-linux) is required for this test: apt-get install bsdutils");
    let line = format!("{} approve {id}", synod_tests::synod_bin().display());
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in cluster.env(1) {
        cmd.env(k, if k == "SYNOD_OPERATOR_KEY" { key.display().to_string() } else { v });
    }
    let mut child = cmd.spawn().expect("run script");
    child.stdin.take().unwrap().write_all(format!("{answer}\n").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn approve_display_on_a_terminal_approves_only_on_yes() {
    // On a terminal, `synod approve` shows the request and asks; "n" approves nothing, "y" approves.
    let (cluster, alice, dave) = setup();
    let msg = cluster.path("m.txt");
    std::fs::write(&msg, "transfer 250").unwrap();
    let args = ["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--request-id", "r2", "--purpose", "payout"];
    ok(&synod_as(&cluster, &dave, &args));
    let approvals = || {
        let info: Value =
            serde_json::from_str(&ok(&cluster.synod(1, &["request", "show", "r2", "-o", "json"]))).unwrap();
        info["approvals"].clone()
    };

    let no = approve_on_a_terminal(&cluster, &alice, "r2", "n");
    let screen = String::from_utf8_lossy(&no.stdout).into_owned();
    assert!(!no.status.success(), "answering n succeeded: {screen}");
    assert!(screen.contains("purpose:     payout") && screen.contains("Approve this request? [y/N]"), "{screen}");
    assert!(screen.contains("not approved"), "{screen}");
    assert_eq!(approvals(), serde_json::json!([]));

    let yes = approve_on_a_terminal(&cluster, &alice, "r2", "y");
    assert!(yes.status.success(), "answering y failed: {}", String::from_utf8_lossy(&yes.stdout));
    // Reads are local: node 1 may apply the approval a moment after the leader answered.
    synod_tests::wait_for("alice's approval at node 1", std::time::Duration::from_secs(20), || {
        (approvals() == serde_json::json!(["alice"])).then_some(())
    });
}
