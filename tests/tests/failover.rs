//! A client that survives dead nodes, with real processes: `SYNOD_ADDRS` lists every node and
//! the CLI moves on from one that cannot be reached; a write whose node died after committing
//! returns its first outcome, applied once; a cluster without a majority says so at once,
//! naming the nodes it cannot reach; and `GET /v1/commands/{id}` tells what became of a command.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use synod_cli::client::ApiClient;
use synod_proto::api::{CommandStatus, WriteResponse};
use synod_proto::{Envelope, Outcome, SignedCommand};
use synod_tests::{fails, ok, run_synod, wait_for, Cluster, Options};

/// The client environment with `SYNOD_ADDRS` listing every node (in id order) and no `SYNOD_ADDR`.
fn env_all(cluster: &Cluster) -> Vec<(&'static str, String)> {
    let mut env = cluster.env(1);
    env.retain(|(k, _)| *k != "SYNOD_ADDR");
    let addrs: Vec<String> = cluster.nodes.values().map(|n| format!("https://{}", n.api_addr)).collect();
    env.push(("SYNOD_ADDRS", addrs.join(",")));
    env
}

/// Runs the CLI against every node of the cluster through `SYNOD_ADDRS`.
fn synod_all(cluster: &Cluster, args: &[&str]) -> Output {
    run_synod(args, &env_all(cluster))
}

/// Creates a 2-of-3 key with an open policy on every node and waits until it is active.
fn create_open_key(cluster: &Cluster, name: &str) {
    ok(&cluster.synod(1, &["key", "create", name, "-t", "2", "--open-policy"]));
    wait_for(&format!("key {name} active"), Duration::from_secs(60), || {
        let out = cluster.synod(1, &["key", "show", name, "-o", "json"]);
        let key: Value = serde_json::from_slice(&out.stdout).ok()?;
        (key["status"] == "active").then_some(())
    });
}

#[test]
fn failover_node_1_down_the_tour_works_through_the_others_and_key_creation_names_it() {
    // With node 1 killed and SYNOD_ADDRS listing all three (node 1 first), every command of the
    // tour that does not need all participants works through nodes 2 and 3; key generation,
    // which needs every participant, fails naming node 1.
    let mut cluster = Cluster::start(3);
    create_open_key(&cluster, "demo");
    cluster.kill(1);
    let status: Value = serde_json::from_str(&ok(&synod_all(&cluster, &["status", "-o", "json"]))).unwrap();
    assert_ne!(status["node_id"], 1, "another node answered");
    assert!(ok(&synod_all(&cluster, &["key", "list"])).contains("demo"));

    let message = cluster.path("tour.txt");
    std::fs::write(&message, b"release 2.0").unwrap();
    let signature = cluster.path("tour.sig");
    let (m, s) = (message.to_str().unwrap(), signature.to_str().unwrap());
    ok(&synod_all(&cluster, &["sign", "demo", "--in", m, "--out", s, "--request-id", "tour-1"]));
    ok(&synod_all(&cluster, &["verify", "--key", "demo", "--in", m, "--signature", s]));
    let shown: Value = serde_json::from_str(&ok(&synod_all(&cluster, &["request", "show", "tour-1", "-o", "json"])))
        .expect("request JSON");
    assert_eq!(shown["status"], "signed");

    ok(&synod_all(&cluster, &["kv", "put", "greeting", "hello"]));
    let record: Value =
        serde_json::from_str(&ok(&synod_all(&cluster, &["kv", "get", "greeting", "-o", "json"]))).expect("record JSON");
    assert_eq!(record["value"], "hello");
    assert!(ok(&synod_all(&cluster, &["audit", "list"])).contains("tour-1"));
    ok(&synod_all(&cluster, &["audit", "verify"]));

    let refused = fails(&synod_all(&cluster, &["key", "create", "payments", "-t", "2", "--open-policy"]));
    assert!(refused.contains("node 1"), "key creation names the participant that is down: {refused}");
}

#[test]
fn failover_write_whose_node_dies_after_committing_returns_its_first_outcome_once() {
    // The leader pauses after an operator's put commits, before it answers (a test-only
    // switch); it is killed in that pause. The client, which sent the put to the leader first,
    // asks the next node what became of the command and prints the first outcome: the index
    // the record was written at, and version 1, so the put applied once.
    let options = Options { faults: Some("pause-after-commit".into()), ..Options::default() };
    let mut cluster = Cluster::start_with(3, options);
    let leader = cluster.wait_leader();
    let mut env = env_all(&cluster);
    env.push(("SYNOD_ADDR", format!("https://{}", cluster.nodes[&leader].api_addr)));
    let child = Command::new(synod_tests::synod_bin())
        .args(["kv", "put", "failover-k", "v1", "-o", "json"])
        .env_remove("SYNOD_ADDR")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn synod");
    wait_for("the leader to pause after committing the put", Duration::from_secs(60), || {
        cluster.nodes[&leader].log_text().contains("the put committed; waiting 5 s").then_some(())
    });
    cluster.kill(leader);
    let answer: WriteResponse =
        serde_json::from_str(&ok(&child.wait_with_output().expect("synod exits"))).expect("the first outcome as JSON");
    assert!(
        matches!(&answer.outcome, Outcome::Applied { detail } if detail.contains("version 1")),
        "the first outcome: {answer:?}"
    );
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let record: Value =
        serde_json::from_str(&ok(&cluster.synod(survivor, &["kv", "get", "failover-k", "-o", "json"]))).unwrap();
    assert_eq!(record["version"], 1, "applied once: {record}");
    assert_eq!(record["updated_index"], answer.index, "the answer names the entry that wrote it");
}

#[test]
fn failover_two_of_three_down_sign_fails_at_once_naming_the_unreachable_nodes() {
    // With nodes 2 and 3 killed, node 1 has no majority: once it has noticed, `synod sign`
    // through SYNOD_ADDRS fails within seconds (measured; asserted under a generous 10 s) and
    // names both nodes, instead of waiting for its timeout.
    let mut cluster = Cluster::start(3);
    create_open_key(&cluster, "demo");
    cluster.kill(2);
    cluster.kill(3);
    wait_for("node 1 to say the cluster has no majority", Duration::from_secs(60), || {
        let out = cluster.synod(1, &["kv", "put", "probe", "1"]);
        String::from_utf8_lossy(&out.stderr).contains("no majority").then_some(())
    });
    let message = cluster.path("m.txt");
    std::fs::write(&message, b"no quorum").unwrap();
    let started = Instant::now();
    let out = synod_all(&cluster, &["sign", "demo", "--in", message.to_str().unwrap()]);
    let elapsed = started.elapsed();
    let error = fails(&out);
    eprintln!("synod sign without a majority failed after {elapsed:?}: {error}");
    assert!(error.contains("the cluster has no majority"), "{error}");
    assert!(error.contains("nodes 2 and 3 unreachable"), "{error}");
    assert!(error.contains("at least 2 of 3 voters"), "{error}");
    assert!(elapsed < Duration::from_secs(10), "failed after {elapsed:?}, not at once");
}

/// An [`ApiClient`] for node `id` as the admin of the test cluster.
fn admin_client(cluster: &Cluster, id: u64) -> (synod_cli::ClientArgs, ApiClient) {
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        client: synod_cli::ClientArgs,
    }
    let env = cluster.env(id);
    let value = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()).unwrap();
    let flags = Flags::parse_from([
        "failover".to_string(),
        format!("--addr={}", value("SYNOD_ADDR")),
        format!("--cacert={}", value("SYNOD_CACERT")),
        format!("--client-cert={}", value("SYNOD_CLIENT_CERT")),
        format!("--client-key={}", value("SYNOD_CLIENT_KEY")),
        format!("--operator-key={}", value("SYNOD_OPERATOR_KEY")),
    ]);
    let api = ApiClient::new(&flags.client).expect("client");
    (flags.client, api)
}

#[test]
fn failover_command_outcomes_applied_refused_unknown_and_final() {
    // GET /v1/commands/{id}: an applied put (its index and outcome; the same signed bytes sent
    // again answer the same, applied once), a put refused at apply (issued too far ahead of the
    // log's time, which admission does not judge), an id no node knows that may still commit,
    // and one that never can (its expiry is behind the log's time).
    let cluster = Cluster::start(3);
    let (args, api) = admin_client(&cluster, 2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let health: synod_proto::api::Health = api.get("/v1/sys/health").await.unwrap().1;
        let cluster_id = health.cluster_id.expect("initialised");
        let key = synod_cli::operator::load_operator_key(args.operator_key.as_ref().unwrap()).unwrap();
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let put = |value: &str| synod_proto::Command::Put { key: "outcome-k".into(), value: value.into() };

        let envelope = Envelope::new(&cluster_id, put("v1"), now_ms, 300_000, &mut rand_core::OsRng);
        let signed = SignedCommand::sign(&envelope, &key);
        let (_, first): (u16, WriteResponse) = api.post("/v1/commands", &signed).await.unwrap();
        let known = api.command_outcome(&envelope.command_id, Some(envelope.expires_at_ms)).await.unwrap();
        assert_eq!(known.status, CommandStatus::Applied);
        assert_eq!((known.index, known.outcome.as_ref()), (Some(first.index), Some(&first.outcome)));
        let (_, again): (u16, WriteResponse) = api.post("/v1/commands", &signed).await.unwrap();
        assert_eq!(again, first, "the same bytes again answer the first outcome");
        let record: synod_proto::api::KvRecord = api.get("/v1/kv/outcome-k").await.unwrap().1;
        assert_eq!(record.version, 1, "applied once");

        let mut ahead = Envelope::new(&cluster_id, put("v2"), now_ms, 300_000, &mut rand_core::OsRng);
        ahead.issued_at_ms = now_ms + 20 * 60 * 1000;
        ahead.expires_at_ms = ahead.issued_at_ms + 60_000;
        let (status, refused): (u16, WriteResponse) =
            api.post("/v1/commands", &SignedCommand::sign(&ahead, &key)).await.unwrap();
        assert_eq!(status, 403, "refused at apply: {refused:?}");
        let known = api.command_outcome(&ahead.command_id, Some(ahead.expires_at_ms)).await.unwrap();
        assert_eq!((known.status, known.index), (CommandStatus::Rejected, Some(refused.index)));
        assert!(matches!(known.outcome, Some(Outcome::Rejected { ref reason, .. }) if reason.contains("ahead")));

        let unknown = "0123456789abcdef0123456789abcdef";
        let open = api.command_outcome(unknown, Some(now_ms + 300_000)).await.unwrap();
        assert_eq!((open.status, open.is_final), (CommandStatus::Unknown, false), "{open:?}");
        assert!(open.errors[0].contains("may still commit"), "{:?}", open.errors);
        let closed = api.command_outcome(unknown, Some(1_000)).await.unwrap();
        assert_eq!((closed.status, closed.is_final), (CommandStatus::Unknown, true), "{closed:?}");
        assert!(closed.errors[0].contains("can no longer commit"), "{:?}", closed.errors);
    });
}
