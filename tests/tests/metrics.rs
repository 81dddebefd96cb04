//! Metrics and readiness against real node processes: a scrape after `synod bench` holds
//! histograms whose counts match the work done, passes `promtool check metrics` (Debian's
//! `prometheus` package), and has every series the Grafana dashboard in `deploy/grafana` draws;
//! `/v1/sys/ready` answers 200 only while the node can take part in signing, and says why not.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use synod_tests::{ok, tls, Cluster};

/// Node `id`'s metrics, scraped as Prometheus would (through the API, read as the admin).
fn scrape(cluster: &Cluster, id: u64) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime.block_on(tls::get(cluster, id, "/v1/sys/metrics"));
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// The sum of the values of the samples named exactly `name` whose labels contain every `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            (series_name == name && labels.iter().all(|l| series.contains(l))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The metric names a Grafana dashboard's queries use (every `synod_…`/`process_…` word in its
/// `expr`s), histogram suffixes taken off.
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    fn walk(value: &Value, exprs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    exprs.push(expr.clone());
                }
                map.values().for_each(|v| walk(v, exprs));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    walk(dashboard, &mut exprs);
    let mut names = BTreeSet::new();
    for expr in exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("synod_") || word.starts_with("process_") {
                names.insert(word.to_string());
            }
        }
    }
    names
}

#[test]
fn metrics_after_a_bench_hold_histograms_that_promtool_accepts_and_the_dashboard_draws() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    ok(&cluster.synod(1, &["key", "create", "bench", "-t", "2", "--open-policy", "-o", "json"]));
    let requests = 30;
    ok(&cluster.synod(
        leader,
        &[
            "bench",
            "--target-existing",
            "--key",
            "bench",
            "--concurrency",
            "1,4",
            "--requests",
            &requests.to_string(),
            "--baseline-secs",
            "0.05",
            "-o",
            "json",
        ],
    ));
    let leader = cluster.wait_leader();
    let scrapes: Vec<String> = (1..=3).map(|id| scrape(&cluster, id)).collect();
    let all = |name: &str, labels: &[&str]| scrapes.iter().map(|text| sum(text, name, labels)).sum::<f64>();

    // Two levels of `requests` signatures each, answered by the nodes the bench spoke to.
    let signed = all("synod_sign_request_duration_seconds_count", &["outcome=\"signed\""]);
    assert!(signed >= f64::from(2 * requests), "signed requests counted: {signed}");
    // The leader coordinated them all (in one session each: no signer failed).
    let text = &scrapes[leader as usize - 1];
    let coordinated = sum(text, "synod_sign_coordination_duration_seconds_count", &["outcome=\"signed\""]);
    assert!(coordinated >= f64::from(2 * requests), "coordinated: {coordinated}\n{text}");
    let sessions = sum(text, "synod_sign_sessions_sum", &["outcome=\"signed\""]);
    assert_eq!(sessions, coordinated, "one session per request\n{text}");
    // A histogram's buckets: the +Inf bucket holds every sample, and buckets only grow.
    let inf = sum(text, "synod_sign_coordination_duration_seconds_bucket", &["outcome=\"signed\"", "le=\"+Inf\""]);
    assert_eq!(inf, coordinated, "{text}");
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("synod_sign_coordination_duration_seconds_bucket{") && l.contains("signed"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(buckets.len() > 10 && buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    // Every signature took at least one commit and one fsync on the leader; the key's DKG
    // was timed on every participant; the commands were counted by kind.
    assert!(sum(text, "synod_raft_commit_duration_seconds_count", &["outcome=\"committed\""]) >= coordinated);
    assert!(sum(text, "synod_store_fsync_duration_seconds_count", &[]) > 0.0, "{text}");
    assert_eq!(all("synod_dkg_duration_seconds_count", &["outcome=\"sealed\""]), 3.0);
    assert!(sum(text, "synod_commands_total", &["kind=\"sign_request\"", "outcome=\"applied\""]) >= coordinated);
    assert!(sum(text, "synod_api_requests_total", &["route=\"/v1/sign\"", "code=\"200\""]) > 0.0 || signed > 0.0);
    assert_eq!(sum(text, "synod_raft_is_leader", &[]), 1.0, "{text}");
    for peer in (1..=3).filter(|p| *p != leader) {
        assert_eq!(sum(text, "synod_peer_up", &[&format!("peer=\"{peer}\"")]), 1.0, "{text}");
    }
    assert!(text.contains("synod_build_info{"), "{text}");
    assert!(text.contains("process_resident_memory_bytes"), "{text}");

    // promtool, Prometheus's own linter, accepts every node's scrape.
    for (i, text) in scrapes.iter().enumerate() {
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool is installed by scripts/test (Debian package prometheus)");
        promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = promtool.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "promtool on node {}'s metrics: {said}", i + 1);
    }

    // Every metric the dashboard queries appears in a scrape of the cluster.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/synod.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("the dashboard is JSON");
    let used = dashboard_metrics(&dashboard);
    assert!(used.len() >= 10, "the dashboard uses only {used:?}");
    let scraped: BTreeSet<String> = scrapes
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = used.iter().filter(|name| !scraped.contains(*name)).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics no node exports: {missing:?}");
}

/// `GET /v1/sys/ready` on node `id` without a client certificate: the status code and body.
fn ready(cluster: &Cluster, id: u64) -> (u16, Value) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime.block_on(tls::exchange(
        &tls::anonymous(cluster),
        &cluster.nodes[&id].api_addr,
        b"GET /v1/sys/ready HTTP/1.1\r\nHost: synod\r\nConnection: close\r\n\r\n",
    ));
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

#[test]
fn ready_is_200_only_while_the_node_can_sign_and_names_what_is_missing() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    ok(&cluster.synod(1, &["key", "create", "all3", "-t", "3", "--open-policy", "-o", "json"]));
    let (code, body) = ready(&cluster, leader);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["reasons"], Value::Array(vec![]));
    // A 3-of-3 key cannot sign with one of its signers down: the leader says which signer, and
    // so does the other follower, which makes no Raft calls of its own while the leader is up.
    // The answer needs no certificate, so it counts the keys and never names them.
    let down = (1..=3).find(|id| *id != leader).unwrap();
    let follower = (1..=3).find(|id| *id != leader && *id != down).unwrap();
    cluster.kill(down);
    for asked in [leader, follower] {
        let body = synod_tests::wait_for("a node to see its peer down", std::time::Duration::from_secs(20), || {
            let (code, body) = ready(&cluster, asked);
            (code == 503).then_some(body)
        });
        assert_eq!(body["ready"], false);
        let reasons = body["reasons"].to_string();
        assert!(
            reasons.contains("1 of this node's keys cannot be signed now")
                && reasons.contains(&format!("not answering: nodes {down}"))
                && !reasons.contains("all3"),
            "node {asked}: {body}"
        );
    }
}
