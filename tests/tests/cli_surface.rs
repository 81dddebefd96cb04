//! The command line's surface as a platform team meets it: shell completions
//! and man pages, `-o json` on every command with failures as
//! `{"errors": [...]}` on stderr, and tables that show times as RFC 3339.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use clap::CommandFactory;
use serde_json::Value;
use synod_cli::display::time_ms;
use synod_tests::{fails, ok, run_synod, synod_bin, wait_for, Cluster, Options};

/// Asserts success and parses stdout as one JSON document. Every stderr line
/// (progress notes) must be JSON too under `-o json`.
fn json_ok(output: &Output) -> Value {
    let stdout = ok(output);
    stderr_is_json_lines(output);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}"))
}

/// Asserts failure with `{"errors": [...]}` as the last stderr line (every
/// earlier line a JSON note) and nothing on stdout; returns the errors joined.
fn json_error(output: &Output) -> String {
    let stderr = fails(output);
    assert!(output.stdout.is_empty(), "a failure printed on stdout: {}", String::from_utf8_lossy(&output.stdout));
    let lines = stderr_is_json_lines(output);
    let last = lines.last().unwrap_or_else(|| panic!("nothing on stderr: {stderr}"));
    let errors = last["errors"].as_array().unwrap_or_else(|| panic!("the last stderr line is not errors: {stderr}"));
    assert!(!errors.is_empty() && errors.iter().all(Value::is_string), "{stderr}");
    errors.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; ")
}

/// Every line of stderr parsed as a JSON object.
fn stderr_is_json_lines(output: &Output) -> Vec<Value> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .map(|line| {
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

/// Whether `text` holds an RFC 3339 UTC time with milliseconds (`2026-12-03T18:41:01.123Z`).
fn has_rfc3339(text: &str) -> bool {
    let shape = b"dddd-dd-ddTdd:dd:dd.dddZ";
    text.as_bytes()
        .windows(shape.len())
        .any(|w| w.iter().zip(shape).all(|(c, s)| if *s == b'd' { c.is_ascii_digit() } else { c == s }))
}

/// Asserts that a table shows the time `ms` as RFC 3339 and never as the integer.
fn shows_time(table: &str, ms: &Value, what: &str) {
    let ms = ms.as_u64().unwrap_or_else(|| panic!("{what}: no time in the JSON ({ms})"));
    assert!(table.contains(&time_ms(ms)), "{what} lacks {}: {table}", time_ms(ms));
    assert!(!table.contains(&ms.to_string()), "{what} shows the epoch integer {ms}: {table}");
}

/// Runs `man -l FILE` (`-` reads stdin) with `input` on stdin; returns the
/// rendered page and man's stderr.
fn man_render(file: &str, input: &[u8]) -> (String, String) {
    let mut child = Command::new("man")
        .args(["-l", file])
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("man (Debian package man-db; scripts/test installs it)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "man -l {file} failed: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn surface_completion_scripts_load_in_bash_and_complete_subcommands() {
    // The bash script sources cleanly, registers a completion for synod and completes `synod ke`
    // to key and kek; zsh and fish get scripts of their own.
    let script = r#"source <("$SYNOD" completion bash) && complete -p synod &&
        COMP_WORDS=(synod ke); COMP_CWORD=1; COMP_LINE="synod ke"; COMP_POINT=8; _synod synod ke synod;
        echo "replies: ${COMPREPLY[*]}""#;
    let out = Command::new("bash").args(["-c", script]).env("SYNOD", synod_bin()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("complete ") && l.trim_end().ends_with(" synod")), "{stdout}");
    let replies = stdout.lines().find_map(|l| l.strip_prefix("replies: ")).unwrap_or_default();
    let replies: BTreeSet<&str> = replies.split_whitespace().collect();
    assert_eq!(replies, BTreeSet::from(["kek", "key"]), "{stdout}");

    for (shell, marker) in [("zsh", "#compdef synod"), ("fish", "complete -c synod")] {
        let script = ok(&run_synod(&["completion", shell], &[]));
        assert!(script.contains(marker), "{shell}: {script}");
    }
    let help = ok(&run_synod(&["completion", "--help"], &[]));
    for place in ["bash-completion/completions/synod", "_synod", "fish/completions/synod.fish"] {
        assert!(help.contains(place), "completion --help does not say where {place} goes: {help}");
    }
}

/// The page names `synod man --out-dir` must write: one per command, named by its path.
fn expected_pages(command: &clap::Command, prefix: &str, pages: &mut BTreeSet<String>) {
    let name =
        if prefix.is_empty() { command.get_name().to_string() } else { format!("{prefix}-{}", command.get_name()) };
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help" && !s.is_hide_set()) {
        expected_pages(sub, &name, pages);
    }
    pages.insert(format!("{name}.1"));
}

#[test]
fn surface_man_pages_render_without_warnings_one_per_subcommand() {
    // `synod man` is a page man renders without a warning; `--out-dir` writes a page for every
    // command and subcommand (synod-key-create.1, ...), each of which renders cleanly too.
    let page = run_synod(&["man"], &[]);
    ok(&page);
    let (text, warnings) = man_render("-", &page.stdout);
    assert!(warnings.is_empty(), "man warned about synod.1: {warnings}");
    assert!(text.contains("SYNOPSIS") && text.contains("completion") && text.contains("Synod"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let listed = json_ok(&run_synod(&["man", "--out-dir", out_dir.to_str().unwrap(), "-o", "json"], &[]));
    let mut expected = BTreeSet::new();
    expected_pages(&synod_cli::Cli::command(), "", &mut expected);
    let written: BTreeSet<String> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(written, expected, "one page per subcommand");
    assert_eq!(listed["pages"].as_array().map(Vec::len), Some(expected.len()), "{listed}");
    for name in ["synod.1", "synod-key.1", "synod-key-create.1", "synod-key-policy-show.1", "synod-ca-issue-node.1"] {
        assert!(written.contains(name), "{name} is missing: {written:?}");
    }
    for name in &written {
        let (text, warnings) = man_render(out_dir.join(name).to_str().unwrap(), b"");
        assert!(warnings.is_empty(), "man warned about {name}: {warnings}");
        assert!(text.contains("SYNOPSIS"), "{name}: {text}");
    }
    let table = ok(&run_synod(&["man", "--out-dir", out_dir.to_str().unwrap()], &[]));
    assert!(table.contains(&format!("wrote {} manual pages", expected.len())), "{table}");
}

#[test]
fn surface_offline_commands_answer_in_json_and_fail_in_json() {
    // The commands that touch only local files print JSON under -o json (SYNOD_OUTPUT too), and
    // every failure is {"errors": [...]} on stderr; without -o json errors stay `Error: ...` text.
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    let json = [("SYNOD_OUTPUT", "json".to_string())];

    let ca = json_ok(&run_synod(&["ca", "init", "--dir", &p("ca"), "-o", "json"], &[]));
    assert!(Path::new(ca["certificate"].as_str().unwrap()).exists(), "{ca}");
    assert_eq!(ca["fingerprint_sha256"].as_str().map(str::len), Some(64), "{ca}");
    let err = json_error(&run_synod(&["ca", "init", "--dir", &p("ca"), "-o", "json"], &[]));
    assert!(err.contains("ca"), "{err}");
    let plain = fails(&run_synod(&["ca", "init", "--dir", &p("ca")], &[]));
    assert!(plain.starts_with("Error: ") && !plain.contains("\"errors\""), "{plain}");

    let node = &["ca", "issue", "node", "--id", "1", "--san", "127.0.0.1", "--ca-dir", &p("ca"), "--out", &p("certs")];
    let issued = json_ok(&run_synod(&[&node[..], &["-o", "json"]].concat(), &[]));
    assert_eq!(issued["subject"]["node"], 1, "{issued}");
    assert!(Path::new(issued["key"].as_str().unwrap()).exists(), "{issued}");
    let client = ["ca", "issue", "client", "--name", "ci", "--ca-dir", &p("ca"), "--out", &p("certs")];
    let issued = json_ok(&run_synod(&client, &json));
    assert_eq!(issued["subject"]["client"], "ci", "{issued}");
    let renew = ["ca", "issue", "--renew", &p("certs/client-ci.crt"), "--ca-dir", &p("ca"), "--days", "30"];
    let renewed = json_ok(&run_synod(&renew, &json));
    assert_eq!(renewed["validity_days"], 30, "{renewed}");
    assert!(Path::new(renewed["previous"].as_str().unwrap()).exists(), "{renewed}");
    let err = json_error(&run_synod(
        &["ca", "issue", "client", "--name", "x", "--ca-dir", &p("none"), "--out", &p("c")],
        &json,
    ));
    assert!(err.contains("none"), "{err}");

    let kek = json_ok(&run_synod(&["kek", "generate-file", "--out", &p("kek.bin"), "-o", "json"], &[]));
    assert_eq!(kek["file"], p("kek.bin"), "{kek}");
    json_error(&run_synod(&["kek", "generate-file", "--out", &p("kek.bin"), "-o", "json"], &[]));
    let pin = [("SYNOD_OUTPUT", "json".to_string()), ("SYNOD_PKCS11_PIN", "1234".to_string())];
    json_error(&run_synod(&["kek", "pkcs11-keygen", "--module", &p("no.so"), "--token-label", "t"], &pin));
    json_error(&run_synod(&["kek", "rotate", "--config", &p("none.toml"), "--new-kek-file", &p("kek.bin")], &json));

    let op = json_ok(&run_synod(&["operator", "keygen", "--out", &p("op.pem"), "-o", "json"], &[]));
    let public = op["public_key"].as_str().unwrap().to_string();
    let shown = json_ok(&run_synod(&["operator", "show", "--key", &p("op.pem"), "-o", "json"], &[]));
    assert_eq!(shown["public_key"], public.as_str());
    let err = json_error(&run_synod(&["operator", "show", "--key", &p("missing.pem"), "-o", "json"], &[]));
    assert!(err.contains("missing.pem"), "{err}");

    // An offline verify of a signature made with the operator key, then of a wrong one.
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(p("op.pem")).unwrap()).unwrap();
    std::fs::write(p("m.txt"), "release 1.0\n").unwrap();
    std::fs::write(p("m.sig"), hex::encode(key.sign(b"release 1.0\n").to_bytes())).unwrap();
    std::fs::write(p("bad.sig"), hex::encode([7u8; 64])).unwrap();
    let verify = ["verify", "--public-key", &public, "--in", &p("m.txt"), "--signature", &p("m.sig"), "-o", "json"];
    assert_eq!(json_ok(&run_synod(&verify, &[]))["valid"], true);
    let verify = ["verify", "--public-key", &public, "--in", &p("m.txt"), "--signature", &p("bad.sig"), "-o", "json"];
    json_error(&run_synod(&verify, &[]));

    let version = json_ok(&run_synod(&["version", "-o", "json"], &[]));
    assert!(version["version"].is_string(), "{version}");
    json_error(&run_synod(&["node", "start", "--config", &p("none.toml"), "-o", "json"], &[]));
    json_error(&run_synod(
        &["node", "ping", "--config", &p("none.toml"), "--peer", "2=127.0.0.1:1", "-o", "json"],
        &[],
    ));
    json_error(&run_synod(&["node", "restore", &p("none.backup"), "--config", &p("none.toml"), "-o", "json"], &[]));

    // Client commands: no CA configured, and a node that is not there.
    let err = json_error(&run_synod(&["status", "-o", "json"], &[]));
    assert!(err.contains("SYNOD_CACERT"), "{err}");
    let nowhere = [
        ("SYNOD_ADDR", "https://127.0.0.1:1".to_string()),
        ("SYNOD_CACERT", p("ca/ca.crt")),
        ("SYNOD_OUTPUT", "json".to_string()),
    ];
    for args in [&["status"][..], &["kv", "get", "x"], &["key", "list"], &["audit", "export"], &["admin", "proposals"]]
    {
        let err = json_error(&run_synod(args, &nowhere));
        assert!(err.contains("cannot reach"), "{args:?}: {err}");
    }
}

#[test]
fn surface_cluster_commands_answer_in_json_and_tables_show_rfc3339_times() {
    // Against a real 2-node cluster: each client command prints one JSON document under -o json
    // (progress as JSON lines on stderr) and fails with {"errors": [...]}; its table shows the
    // times the JSON holds as epoch milliseconds in RFC 3339 instead.
    let cluster = Cluster::start_with(2, Options::default());
    let run = |args: &[&str]| cluster.synod(1, args);
    let json = |args: &[&str]| json_ok(&run(&[args, &["-o", "json"]].concat()));
    let table = |args: &[&str]| ok(&run(args));

    assert!(json(&["status"])["members"].is_array());
    assert!(json(&["health"])["node_id"].is_u64());

    assert!(json(&["kv", "put", "greeting", "hello"])["index"].is_u64());
    let record = json(&["kv", "get", "greeting"]);
    let shown = table(&["kv", "get", "greeting"]);
    assert!(shown.contains("value:   hello"), "{shown}");
    shows_time(&shown, &record["updated_at_ms"], "kv get");
    assert_eq!(json(&["kv", "list"])["keys"]["greeting"], 1);

    let key = json(&["key", "create", "k", "-t", "2", "--open-policy"]);
    assert_eq!(key["status"], "active", "{key}");
    let list = json(&["key", "list"]);
    shows_time(&table(&["key", "list"]), &list["keys"][0]["created_at_ms"], "key list");
    let shown = table(&["key", "show", "k"]);
    shows_time(&shown, &key["created_at_ms"], "key show");
    shows_time(&shown, &key["activated_at_ms"], "key show");
    let pem = json(&["key", "show", "k", "--format", "pem"]);
    assert!(pem["public_key"].as_str().unwrap().starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    assert!(json(&["key", "show", "k", "--format", "jwks"])["keys"].is_array());

    let msg = cluster.path("m.txt");
    std::fs::write(&msg, "release 1.0\n").unwrap();
    let m = msg.to_str().unwrap();
    let signed = json(&["sign", "k", "--in", m, "--request-id", "r1"]);
    let sig = cluster.path("m.sig");
    std::fs::write(&sig, signed["signature"].as_str().unwrap()).unwrap();
    let verified = json(&["verify", "--key", "k", "--in", m, "--signature", sig.to_str().unwrap()]);
    assert_eq!(verified["valid"], true);
    let request = json(&["request", "show", "r1"]);
    let shown = table(&["request", "show", "r1"]);
    for field in ["created_at_ms", "finished_at_ms", "expires_at_ms"] {
        shows_time(&shown, &request[field], &format!("request show ({field})"));
    }

    // An approver, a policy that needs her, and a request that waits for her.
    let (alice, alice_public) = cluster.keygen("alice");
    let added = json(&["operator", "add", "alice", "--key", &alice_public, "--roles", "approver"]);
    assert!(added["index"].is_u64(), "{added}");
    let operators = json(&["operator", "list"]);
    assert!(operators["operators"].as_array().unwrap().iter().any(|o| o["name"] == "alice"), "{operators}");
    let policy = cluster.path("policy.json");
    std::fs::write(&policy, r#"{"approvers": ["alice"], "approvals_required": 1, "environments": ["prod"]}"#).unwrap();
    json(&["key", "policy", "set", "k", "--file", policy.to_str().unwrap()]);
    let shown_policy = json(&["key", "policy", "show", "k"]);
    assert_eq!(shown_policy["policy"]["approvals_required"], 1, "{shown_policy}");
    let shown = table(&["key", "policy", "show", "k"]);
    for line in
        ["approvers:          alice", "approvals required: 1", "environments:       prod", "expires:            never"]
    {
        assert!(shown.contains(line), "policy show lacks {line:?}: {shown}");
    }
    assert!(!shown.contains('{'), "policy show printed JSON as a table: {shown}");

    let waiting = json(&["request", "sign", "k", "--in", m, "--request-id", "r2", "--environment", "prod"]);
    assert_eq!(waiting["status"], "awaiting_approval", "{waiting}");
    let statement = cluster.path("r2.statement");
    let written = json(&["request", "statement", "r2", "--out", statement.to_str().unwrap()]);
    assert_eq!(written["request_id"], "r2");
    assert!(statement.exists());
    let approved = cluster.synod_as(1, &alice, &["approve", "r2", "--yes", "-o", "json"]);
    assert!(json_ok(&approved)["index"].is_u64());
    let waited = cluster.synod(1, &["request", "wait", "r2", "--timeout-secs", "60", "-o", "json"]);
    assert_eq!(json_ok(&waited)["status"], "signed");
    let shown = table(&["request", "wait", "r2"]);
    assert!(has_rfc3339(&shown) && shown.contains("finished:"), "{shown}");

    // The audit log: a table with a time column, one record as a key: value list.
    let records = json(&["audit", "list"]);
    let first = &records[0];
    let shown = table(&["audit", "list"]);
    assert!(shown.starts_with("   SEQ   INDEX TIME"), "{shown}");
    shows_time(&shown, &first["time_ms"], "audit list");
    let record = json(&["audit", "show", "1"]);
    assert_eq!(record["seq"], 1);
    let shown = table(&["audit", "show", "1"]);
    assert!(shown.contains("seq:         1") && shown.contains("hash:"), "{shown}");
    shows_time(&shown, &record["time_ms"], "audit show");
    assert_eq!(json(&["audit", "verify"])["valid"], true);
    let export = ok(&run(&["audit", "export", "-o", "json"]));
    assert!(export.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "{export}");
    assert!(json(&["audit", "checkpoints"])["checkpoints"].is_array());
    assert!(table(&["audit", "checkpoints"]).contains("audit key:"));

    let backup = cluster.path("node-1.backup");
    let backed = json(&["node", "backup", "--out", backup.to_str().unwrap()]);
    assert_eq!(backed["node_id"], 1, "{backed}");
    assert!(table(&["admin", "proposals"]).contains("no admin proposals are pending"));

    // Failures, each as {"errors": [...]}.
    let err = json_error(&run(&["key", "show", "nope", "-o", "json"]));
    assert!(err.contains("nope"), "{err}");
    json_error(&run(&["sign", "k", "--in", "/nonexistent/m.txt", "-o", "json"]));
    json_error(&run(&["request", "show", "unknown-request", "-o", "json"]));
    json_error(&run(&["audit", "show", "999999", "-o", "json"]));
    let err = json_error(&cluster.synod_as(1, &alice, &["kv", "put", "x", "y", "-o", "json"]));
    assert!(err.contains("refused") || err.contains("not"), "{err}");

    // Under a 2-admin policy a key change waits as a proposal; its table shows when it expires.
    let (second, second_public) = cluster.keygen("second-admin");
    json(&["operator", "add", "second-admin", "--key", &second_public, "--roles", "admin"]);
    json(&["admin", "policy", "--approvals", "2"]);
    let proposed = json(&["key", "disable", "k"]);
    assert!(proposed["detail"].as_str().unwrap_or_default().contains("proposal"), "{proposed}");
    let proposals = wait_for("the proposal at node 1", std::time::Duration::from_secs(20), || {
        let list = json(&["admin", "proposals"]);
        (!list["proposals"].as_array()?.is_empty()).then_some(list)
    });
    let proposal = &proposals["proposals"][0];
    let shown = table(&["admin", "proposals"]);
    shows_time(&shown, &proposal["expires_at_ms"], "admin proposals");
    assert!(shown.contains("disable_key"), "{shown}");
    let id = proposal["id"].as_str().unwrap();
    let agreed = cluster.synod_as(1, &second, &["admin", "approve", id, "-o", "json"]);
    assert!(json_ok(&agreed)["index"].is_u64());
}
