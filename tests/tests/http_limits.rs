//! The client API under hostile connections, each test written as an attack on a real node:
//! idle half-open requests from one address, a large body sent without a client
//! certificate, and the documented limits table checked against the code.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use synod_node::api::{COMMAND_BODY_BYTES_MAX, CONNECTIONS_PER_IP_MAX, HEADER_READ_TIMEOUT};
use synod_tests::{ok, tls, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The attacker's source address: Linux routes all of 127/8 to the loopback device.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Idle connections the attacker opens at once.
const ATTACK_CONNECTIONS: usize = 2_000;
/// The correctness bound on closing an idle attacker: the documented header timeout plus 2 s.
const CLOSE_BOUND: Duration = Duration::from_secs(HEADER_READ_TIMEOUT.as_secs() + 2);

/// What became of one attacking connection.
#[derive(Debug)]
enum Fate {
    /// Closed by the node before the TLS handshake finished: a connection cap refused it.
    Refused,
    /// Handshake done, half a request head sent; the node closed it after this long.
    Closed(Duration),
    /// Still open well past the bound.
    StillOpen,
}

/// One slowloris connection: TLS without a client certificate, then a request head that never
/// ends. Marks itself settled (refused or holding) in `settled`, and counts itself in `holding`
/// while the node keeps it open.
async fn slow_client(
    connector: tokio_rustls::TlsConnector,
    addr: String,
    settled: Arc<AtomicUsize>,
    holding: Arc<AtomicUsize>,
) -> Fate {
    let Ok(mut stream) = tls::connect(&connector, &addr, ATTACKER).await else {
        settled.fetch_add(1, Ordering::SeqCst);
        return Fate::Refused;
    };
    let start = Instant::now();
    holding.fetch_add(1, Ordering::SeqCst);
    settled.fetch_add(1, Ordering::SeqCst);
    let _ = stream.write_all(b"GET /v1/sys/status HTTP/1.1\r\nHost: synod\r\n").await;
    let _ = stream.flush().await;
    let mut buf = [0u8; 512];
    let fate = loop {
        match tokio::time::timeout(CLOSE_BOUND * 3, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Fate::Closed(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => break Fate::StillOpen,
        }
    };
    holding.fetch_sub(1, Ordering::SeqCst);
    fate
}

#[test]
fn api_slowloris_from_one_address_does_not_stop_signing() {
    // 2,000 idle TLS connections without a client certificate from 127.0.0.2: the per-address
    // cap refuses all but CONNECTIONS_PER_IP_MAX at accept, the node closes every one it
    // admitted within the header timeout plus 2 s, and a legitimate `synod sign` from 127.0.0.1
    // succeeds while the attack holds its connections.
    let cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "k", "-t", "2", "--open-policy"]));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (settled, holding) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let connector = tls::anonymous(&cluster);
    let addr = cluster.nodes[&1].api_addr.clone();
    let attackers: Vec<_> = (0..ATTACK_CONNECTIONS)
        .map(|_| runtime.spawn(slow_client(connector.clone(), addr.clone(), settled.clone(), holding.clone())))
        .collect();
    synod_tests::wait_for("every attacking connection to be refused or held", Duration::from_secs(120), || {
        (settled.load(Ordering::SeqCst) == ATTACK_CONNECTIONS).then_some(())
    });

    let held_at_sign = holding.load(Ordering::SeqCst);
    let signed = cluster.sign(1, "k", b"signed under attack", "under-attack");
    let signed = signed.unwrap_or_else(|e| panic!("a legitimate sign failed during the attack: {e}"));
    assert!(signed["signature"].is_string(), "{signed}");
    assert!(held_at_sign > 0, "the attack held no connection when the sign started");

    let fates: Vec<Fate> = attackers.into_iter().map(|task| runtime.block_on(task).unwrap()).collect();
    let refused = fates.iter().filter(|f| matches!(f, Fate::Refused)).count();
    let closed: Vec<Duration> =
        fates.iter().filter_map(|f| if let Fate::Closed(after) = f { Some(*after) } else { None }).collect();
    assert!(!fates.iter().any(|f| matches!(f, Fate::StillOpen)), "a connection outlived {CLOSE_BOUND:?}");
    assert!(closed.len() <= CONNECTIONS_PER_IP_MAX, "{} admitted from one address", closed.len());
    assert_eq!(refused + closed.len(), ATTACK_CONNECTIONS);
    assert!(refused >= ATTACK_CONNECTIONS - CONNECTIONS_PER_IP_MAX, "only {refused} refused");
    let slowest = closed.iter().max().copied().unwrap_or_default();
    assert!(slowest <= CLOSE_BOUND, "an idle connection stayed open {slowest:?}, over {CLOSE_BOUND:?}");
    eprintln!("{refused} refused at accept, {} closed, the slowest after {slowest:?}", closed.len());

    let counted =
        runtime.block_on(tls::metric(&cluster, 1, "synod_api_connections_refused_total", Some("cap=\"per_ip\"")));
    assert!(counted >= refused as u64, "metrics count {counted} refusals, the attacker saw {refused}");
    let timed_out = runtime.block_on(tls::metric(&cluster, 1, "synod_api_header_timeouts_total", None));
    assert!(
        timed_out >= closed.len() as u64,
        "metrics count {timed_out} header timeouts, {} were closed",
        closed.len()
    );
}

#[test]
fn api_body_without_certificate_is_not_read() {
    // A 200 KiB body to /v1/sign without a client certificate gets 401 after the first
    // kilobyte: the node answers without waiting for the rest. Unknown routes are 401 too, and
    // health still answers. With a certificate, a body over the route's limit is refused with
    // 413 from its declared length.
    let cluster = Cluster::start(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = cluster.nodes[&1].api_addr.clone();
    let anonymous = tls::anonymous(&cluster);
    let head = format!(
        "POST /v1/sign HTTP/1.1\r\nHost: synod\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        200 * 1024
    );
    let mut partial = head.into_bytes();
    partial.extend(std::iter::repeat_n(b'x', 1024));
    // `exchange` sends only this much and then waits for the answer; a node that buffered the
    // body first would never answer (and the helper fails after its timeout).
    let answer = runtime.block_on(tls::exchange(&anonymous, &addr, &partial));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("client certificate"), "{answer}");

    let answer = runtime.block_on(tls::exchange(
        &anonymous,
        &addr,
        b"GET /v1/no-such-route HTTP/1.1\r\nHost: synod\r\nConnection: close\r\n\r\n",
    ));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let answer = runtime.block_on(tls::exchange(
        &anonymous,
        &addr,
        b"GET /v1/sys/health HTTP/1.1\r\nHost: synod\r\nConnection: close\r\n\r\n",
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let oversized = format!(
        "POST /v1/sign HTTP/1.1\r\nHost: synod\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
        COMMAND_BODY_BYTES_MAX + 1
    );
    let answer = runtime.block_on(tls::exchange(&tls::authenticated(&cluster), &addr, oversized.as_bytes()));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let unauthenticated = runtime.block_on(tls::metric(&cluster, 1, "synod_api_unauthenticated_requests_total", None));
    assert!(unauthenticated >= 2, "{unauthenticated}");
}

/// Limits ARCHITECTURE.md documents that the code does not define yet, each with the reason.
/// The test fails when one of them appears in the code, so this list can only shrink.
const DOCUMENTED_NOT_YET_IN_CODE: &[&str] = &[];

#[test]
fn limits_table_names_only_constants_that_exist() {
    // Every SCREAMING_CASE name in ARCHITECTURE.md's limits table is a `const` (or `static`)
    // somewhere in the workspace's Rust sources, so a documented limit cannot go missing.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let table = doc.split("\n## Limits\n").nth(1).expect("a Limits section").split("\n## ").next().unwrap();
    let mut names = std::collections::BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with('|') && !l.starts_with("|---")) {
        let cells: Vec<&str> = row.split('|').collect();
        let where_cell = cells[cells.len().saturating_sub(2)];
        for code in where_cell.split('`').skip(1).step_by(2) {
            for word in code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let screaming = word.contains('_')
                    && word.starts_with(|c: char| c.is_ascii_uppercase())
                    && word.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if screaming {
                    names.insert(word.to_string());
                }
            }
        }
    }
    assert!(names.len() > 40, "the table parsed into too few names: {names:?}");
    let mut sources = String::new();
    for dir in ["proto", "node", "cli", "coordinator", "sim", "tests"] {
        collect_rust(&root.join(dir), &mut sources);
    }
    let defined = |name: &str| {
        ["const ", "static "].iter().any(|kw| {
            sources.match_indices(&format!("{kw}{name}")).any(|(at, m)| {
                let next = sources[at + m.len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        })
    };
    let missing: Vec<&String> =
        names.iter().filter(|n| !defined(n) && !DOCUMENTED_NOT_YET_IN_CODE.contains(&n.as_str())).collect();
    assert!(missing.is_empty(), "ARCHITECTURE.md's limits table names constants the code lacks: {missing:?}");
    let arrived: Vec<&&str> = DOCUMENTED_NOT_YET_IN_CODE.iter().filter(|n| defined(n)).collect();
    assert!(arrived.is_empty(), "now defined in the code; remove from DOCUMENTED_NOT_YET_IN_CODE: {arrived:?}");
}

fn collect_rust(dir: &std::path::Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
            collect_rust(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            out.push('\n');
        }
    }
}
