//! Who may speak: peers and clients are authenticated by certificates from the
//! cluster CA, and authority comes only from operator signatures that every
//! node verifies itself.

use std::time::Duration;

use synod_tests::{fails, ok, run_synod, wait_for, Cluster, Options};

#[test]
fn transport_node_from_another_ca_is_refused_and_logged() {
    // A node whose certificate chains to another CA cannot reach the cluster: its
    // first stream fails, and the contacted node logs the refusal.
    let cluster = Cluster::start(3);
    let other = tempfile::tempdir().unwrap();
    let p = |s: &str| other.path().join(s).display().to_string();
    ok(&run_synod(&["ca", "init", "--dir", &p("ca")], &[]));
    ok(&run_synod(
        &["ca", "issue", "node", "--id", "4", "--san", "127.0.0.1", "--ca-dir", &p("ca"), "--out", &p("certs")],
        &[],
    ));
    let config = other.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = 4\ndata_dir = \"data\"\nraft_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:1\"\n\
             genesis_admins = [\"{}\"]\n\
             [tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[kek]\nbackend = \"file\"\npath = \"kek.bin\"\n",
            cluster.admin_key_hex(),
            p("ca/ca.crt"),
            p("certs/node-4.crt"),
            p("certs/node-4.key")
        ),
    )
    .unwrap();
    let target = &cluster.nodes[&1];
    let peer = format!("1={}", target.raft_addr);
    let err = fails(&run_synod(&["node", "ping", "--config", &config.display().to_string(), "--peer", &peer], &[]));
    assert!(err.contains("node 1"), "{err}");
    wait_for("node 1 to log the refused handshake", Duration::from_secs(10), || {
        target.log_text().contains("refused peer connection: TLS handshake failed").then_some(())
    });
}

#[test]
fn transport_certified_node_that_is_not_a_member_is_refused() {
    // A certificate from the right CA is not enough: a node outside the signed
    // member registry is refused on its first stream, and the refusal is logged.
    let mut cluster = Cluster::start(3);
    let stranger = cluster.add_node_files(9).config.display().to_string();
    let member = cluster.add_node_files(2_000).config.display().to_string();
    let _ = member;
    let target = &cluster.nodes[&1];
    let err =
        fails(&run_synod(&["node", "ping", "--config", &stranger, "--peer", &format!("1={}", target.raft_addr)], &[]));
    assert!(err.contains("node 1"), "{err}");
    wait_for("node 1 to log the refusal", Duration::from_secs(10), || {
        target.log_text().contains("refused peer: node is not a member").then_some(())
    });
    // A member's own certificate gets through.
    let own = cluster.nodes[&2].config.display().to_string();
    let out = ok(&run_synod(&["node", "ping", "--config", &own, "--peer", &format!("1={}", target.raft_addr)], &[]));
    assert!(out.contains("node 1 answered"), "{out}");
}

#[test]
fn api_client_without_valid_certificate_cannot_write() {
    // No client certificate: writes and status are refused with a clear message.
    // A client certificate from another CA: the TLS handshake fails.
    let cluster = Cluster::start(3);
    let mut env = cluster.env(1);
    env.retain(|(k, _)| !k.starts_with("SYNOD_CLIENT_"));
    let err = fails(&run_synod(&["kv", "put", "a", "b"], &env));
    assert!(err.contains("client certificate"), "{err}");
    // Health needs no certificate (load balancers).
    ok(&run_synod(&["health"], &env));

    let other = tempfile::tempdir().unwrap();
    let p = |s: &str| other.path().join(s).display().to_string();
    ok(&run_synod(&["ca", "init", "--dir", &p("ca")], &[]));
    ok(&run_synod(&["ca", "issue", "client", "--name", "mallory", "--ca-dir", &p("ca"), "--out", &p("c")], &[]));
    let mut env = cluster.env(1);
    for (k, v) in env.iter_mut() {
        match *k {
            "SYNOD_CLIENT_CERT" => *v = p("c/client-mallory.crt"),
            "SYNOD_CLIENT_KEY" => *v = p("c/client-mallory.key"),
            _ => {}
        }
    }
    // The CLI itself refuses a certificate that does not chain to the CA it trusts.
    let err = fails(&run_synod(&["kv", "put", "a", "b"], &env));
    assert!(err.contains("not issued by this CA") || err.contains("client-mallory"), "{err}");
    assert!(cluster.get(1, "a").is_none());
}

#[test]
fn authority_non_admin_operator_cannot_write() {
    // A valid client certificate with an operator key that is not an admin: the
    // leader refuses before proposing, and nothing is committed.
    let cluster = Cluster::start(3);
    let key = cluster.path("stranger.pem").display().to_string();
    ok(&run_synod(&["operator", "keygen", "--out", &key], &[]));
    let mut env = cluster.env(2);
    env.retain(|(k, _)| *k != "SYNOD_OPERATOR_KEY");
    env.push(("SYNOD_OPERATOR_KEY", key));
    let err = fails(&run_synod(&["kv", "put", "a", "b"], &env));
    assert!(err.contains("not an admin"), "{err}");
    let status = cluster.status(1).unwrap();
    assert_eq!(status["rejected_commands"], 0);
}

#[test]
fn authority_unsigned_membership_change_committed_by_faulty_leader_is_refused_everywhere() {
    // With a leader built to skip its own checks, a membership change signed by a
    // non-admin is committed to the log, and every node refuses it when applying:
    // the registry and Raft's voters stay as they were.
    let cluster = Cluster::start_with(3, Options { faults: Some("skip-author-check".into()), ..Options::default() });
    let version = ok(&run_synod(&["version", "-o", "json"], &[]));
    assert!(
        version.contains("skip-author-check"),
        "the test binary must be built with SYNOD_BUILD_FAULTS=1: {version}"
    );
    let key = cluster.path("stranger.pem").display().to_string();
    ok(&run_synod(&["operator", "keygen", "--out", &key], &[]));
    let mut env = cluster.env(1);
    env.retain(|(k, _)| *k != "SYNOD_OPERATOR_KEY");
    env.push(("SYNOD_OPERATOR_KEY", key));
    let args = ["cluster", "add-member", "--id", "9", "--raft-addr", "127.0.0.1:9", "--api-addr", "127.0.0.1:10"];
    let err = fails(&run_synod(&args, &env));
    assert!(err.contains("refused") && err.contains("not an admin"), "{err}");
    for id in 1..=3 {
        let status = wait_for("the refusal to be applied", Duration::from_secs(30), || {
            cluster.status(id).filter(|s| s["rejected_commands"].as_u64() >= Some(1))
        });
        let rejection = &status["recent_rejections"][0];
        assert_eq!(rejection["kind"], "add_member", "node {id}: {status}");
        assert!(rejection["reason"].as_str().unwrap().contains("not an admin"));
        let members: Vec<u64> =
            status["members"].as_array().unwrap().iter().map(|m| m["node_id"].as_u64().unwrap()).collect();
        assert_eq!(members, vec![1, 2, 3], "node {id} changed membership");
        assert!(cluster.nodes[&id].log_text().contains("refused a committed command"), "node {id} logged the reason");
    }
    // The leader keeps reconciling from the registry: node 9 never becomes a member.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.voters(1), vec![1, 2, 3]);
}

#[test]
fn api_malformed_and_oversized_requests_get_json_errors() {
    // Garbage, a forged signature and an oversized body each get a JSON error
    // saying what was wrong, and nothing is committed.
    let cluster = Cluster::start(1);
    let curl = |body_file: &std::path::Path| post_commands(&cluster, body_file);
    let body = cluster.path("body.json");
    std::fs::write(&body, "{not json").unwrap();
    let (code, json) = curl(&body);
    assert_eq!(code, "400");
    assert!(json["errors"][0].as_str().unwrap().contains("not a signed command"), "{json}");

    let forged = serde_json::json!({"envelope": "{}", "author": "00".repeat(32), "signature": "00".repeat(64)});
    std::fs::write(&body, forged.to_string()).unwrap();
    let (code, json) = curl(&body);
    assert_eq!(code, "400", "{json}");
    assert!(!json["errors"][0].as_str().unwrap().is_empty());

    std::fs::write(&body, vec![b' '; 400 * 1024]).unwrap();
    let (code, json) = curl(&body);
    assert_eq!(code, "413", "{json}");
    assert!(json["errors"][0].as_str().unwrap().contains("limit"), "{json}");
    assert_eq!(cluster.status(1).unwrap()["rejected_commands"], 0);
}

/// POSTs the file `body_file` to node 1's `/v1/commands` with curl, as any
/// client-certificate holder could; returns the HTTP code and the JSON body.
fn post_commands(cluster: &Cluster, body_file: &std::path::Path) -> (String, serde_json::Value) {
    post_commands_to(cluster, 1, body_file)
}

/// [`post_commands`] to node `id`.
fn post_commands_to(cluster: &Cluster, id: u64, body_file: &std::path::Path) -> (String, serde_json::Value) {
    let env: std::collections::BTreeMap<&str, String> = cluster.env(id).into_iter().collect();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert", &env["SYNOD_CACERT"]])
        .args(["--cert", &env["SYNOD_CLIENT_CERT"], "--key", &env["SYNOD_CLIENT_KEY"]])
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body_file.display()))
        .arg(format!("{}/v1/commands", env["SYNOD_ADDR"]))
        .output()
        .expect("curl is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), serde_json::from_str::<serde_json::Value>(body).unwrap_or_default())
}

#[test]
fn admission_node_authored_commands_without_their_node_never_reach_the_log() {
    // A client-certificate holder posts `sign_failed` "from node 1" three ways: signed by a
    // throwaway key with certificate bytes "00", with node 1's real certificate but the
    // throwaway key, and padded with 100 KB of fields no command has. The receiving node
    // refuses each before proposing it, saying what was wrong, and the log does not grow.
    let cluster = Cluster::start(1);
    let status = cluster.status(1).unwrap();
    let cluster_id = status["cluster_id"].as_str().unwrap().to_string();
    let index_before = status["last_log_index"].as_u64().unwrap();
    let throwaway = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let envelope = |n: u64| synod_proto::Envelope {
        cluster_id: cluster_id.clone(),
        command_id: format!("{:032x}", now * 10 + n),
        issued_at_ms: now,
        expires_at_ms: now + 60_000,
        command: synod_proto::Command::SignFailed {
            request_id: "someone-elses".into(),
            node_id: 1,
            reason: "forged".into(),
            culprits: vec![],
            attempt: 0,
        },
    };
    let body = cluster.path("forged.json");
    let post = |signed: &serde_json::Value| {
        std::fs::write(&body, signed.to_string()).unwrap();
        post_commands(&cluster, &body)
    };

    let bogus = synod_proto::SignedCommand {
        certificate: Some("00".into()),
        ..synod_proto::SignedCommand::sign(&envelope(1), &throwaway)
    };
    let (code, json) = post(&serde_json::to_value(&bogus).unwrap());
    assert_eq!(code, "403", "{json}");
    assert!(json["errors"][0].as_str().unwrap().contains("certificate"), "{json}");

    let node_cert = synod_node::pki::certificate_der(&cluster.path("certs/node-1.crt")).unwrap();
    let stolen = synod_proto::SignedCommand::sign_as_node(&envelope(2), &throwaway, &node_cert);
    let (code, json) = post(&serde_json::to_value(&stolen).unwrap());
    assert_eq!(code, "403", "{json}");
    assert!(json["errors"][0].as_str().unwrap().contains("not signed by its certificate key"), "{json}");

    let mut padded: serde_json::Value = serde_json::to_value(envelope(3)).unwrap();
    padded["padding"] = serde_json::Value::String("x".repeat(100 * 1024));
    let text = padded.to_string();
    let signature = {
        use ed25519_dalek::Signer;
        let mut bytes = synod_proto::command::COMMAND_DOMAIN.to_vec();
        bytes.extend_from_slice(text.as_bytes());
        hex::encode(throwaway.sign(&bytes).to_bytes())
    };
    let signed = serde_json::json!({
        "envelope": text,
        "author": hex::encode(throwaway.verifying_key().to_bytes()),
        "signature": signature,
        "certificate": "00",
    });
    let (code, json) = post(&signed);
    assert_eq!(code, "400", "{json}");
    assert!(json["errors"][0].as_str().unwrap().contains("padding"), "{json}");

    let status = cluster.status(1).unwrap();
    assert_eq!(status["last_log_index"].as_u64().unwrap(), index_before, "nothing was proposed");
    assert_eq!(status["rejected_commands"], 0);
}

#[test]
fn bootstrap_init_by_an_operator_the_nodes_did_not_pin_is_refused() {
    // Any client-certificate holder can reach an uninitialised node's API. Its genesis,
    // signed by a key of its own, is refused before Raft is touched, naming the setting
    // that decides (genesis_admins); the pinned admin then initialises the same nodes.
    let mut cluster = Cluster::prepare(Options::default());
    for id in 1..=2 {
        cluster.add_node_files(id);
    }
    cluster.start_new_nodes(&[1, 2]);
    ok(&run_synod(&["operator", "keygen", "--out", &cluster.path("intruder.pem").display().to_string()], &[]));
    let args = cluster.init_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut intruder = cluster.env(1);
    intruder.retain(|(k, _)| *k != "SYNOD_OPERATOR_KEY");
    intruder.push(("SYNOD_OPERATOR_KEY", cluster.path("intruder.pem").display().to_string()));
    let err = fails(&run_synod(&args, &intruder));
    assert!(err.contains("genesis_admins"), "{err}");
    let health = cluster.synod(1, &["health", "-o", "json"]);
    let health: serde_json::Value = serde_json::from_slice(&health.stdout).expect("health JSON");
    assert_eq!(health["initialized"], false, "{health}");

    ok(&cluster.synod(1, &args));
    cluster.wait_leader();
    cluster.put(2, "after", "init").unwrap();
}

#[test]
fn admission_outcome_from_a_member_that_does_not_coordinate_never_reaches_the_log() {
    // A member's own node certificate and key are not enough to report a signing outcome:
    // in each term only the leader that took up signing may. A follower's `sign_failed`,
    // signed with its real node key, is refused by the leader and by the follower itself
    // before it is proposed, naming the coordinator; so is a take-up of signing in the
    // follower's name. The log does not grow.
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let identity = {
        let path = |s: String| cluster.path(&s);
        let tls = synod_node::pki::TlsMaterial::load(
            &path("ca/ca.crt".into()),
            &path(format!("certs/node-{follower}.crt")),
            &path(format!("certs/node-{follower}.key")),
        )
        .unwrap();
        synod_node::pki::NodeIdentity::from_tls(&tls).unwrap()
    };
    let status = cluster.status(leader).unwrap();
    let cluster_id = status["cluster_id"].as_str().unwrap().to_string();
    let term = status["term"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let next = std::sync::atomic::AtomicU64::new(0);
    let signed = |command: synod_proto::Command| {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let envelope = synod_proto::Envelope {
            cluster_id: cluster_id.clone(),
            command_id: format!("{:032x}", now * 100 + n),
            issued_at_ms: now,
            expires_at_ms: now + 60_000,
            command,
        };
        serde_json::to_value(identity.sign(&envelope)).unwrap()
    };
    let failed = || synod_proto::Command::SignFailed {
        request_id: "coordinated-by-the-leader".into(),
        node_id: follower,
        reason: "forged by a compromised member".into(),
        culprits: vec![],
        attempt: 0,
    };
    let body = cluster.path("outcome.json");
    let post = |to: u64, signed: &serde_json::Value| {
        std::fs::write(&body, signed.to_string()).unwrap();
        post_commands_to(&cluster, to, &body)
    };
    // The leader takes up signing right after it is elected; until then no outcome is taken either.
    let named = format!("which node {leader} coordinates");
    for to in [leader, follower] {
        wait_for("the leader's take-up to be applied", Duration::from_secs(20), || {
            let (code, json) = post(to, &signed(failed()));
            assert_eq!(code, "403", "to node {to}: {json}");
            json["errors"][0].as_str().unwrap().contains(&named).then_some(())
        });
    }
    let index_before = cluster.status(leader).unwrap()["last_log_index"].as_u64().unwrap();

    for to in [leader, follower] {
        let (code, json) = post(to, &signed(failed()));
        assert_eq!(code, "403", "to node {to}: {json}");
        let error = json["errors"][0].as_str().unwrap();
        assert!(error.contains(&named) && error.contains(&format!("node {follower}")), "to node {to}: {error}");
    }
    let batch = synod_proto::Command::SignOutcomes { node_id: follower, outcomes: vec![failed()] };
    let (code, json) = post(leader, &signed(batch));
    assert_eq!(code, "403", "{json}");
    assert!(json["errors"][0].as_str().unwrap().contains(&named), "{json}");
    for to in [leader, follower] {
        let take_up = synod_proto::Command::Coordinate { node_id: follower, term };
        let (code, json) = post(to, &signed(take_up));
        assert_eq!(code, "403", "to node {to}: {json}");
        assert!(json["errors"][0].as_str().unwrap().contains("only by the leader, for itself"), "{json}");
    }

    let status = cluster.status(leader).unwrap();
    assert_eq!(status["last_log_index"].as_u64().unwrap(), index_before, "nothing was proposed");
    assert_eq!(status["rejected_commands"], 0);
}

#[test]
fn admission_oversized_field_is_refused_naming_it_and_its_limit() {
    // An admin-signed membership change whose address is longer than any address can be is
    // refused by the receiving node before it is proposed, naming the field, its size and the
    // limit; the log does not grow.
    let cluster = Cluster::start(1);
    let status = cluster.status(1).unwrap();
    let cluster_id = status["cluster_id"].as_str().unwrap().to_string();
    let index_before = status["last_log_index"].as_u64().unwrap();
    let admin = synod_cli::operator::load_operator_key(&cluster.path("admin.pem")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let raft_addr = format!("{}.example:7000", "h".repeat(1000));
    let envelope = synod_proto::Envelope {
        cluster_id,
        command_id: format!("{:032x}", now),
        issued_at_ms: now,
        expires_at_ms: now + 60_000,
        command: synod_proto::Command::AddMember {
            node_id: 9,
            addr: synod_proto::NodeAddr { raft_addr: raft_addr.clone(), api_addr: "127.0.0.1:9".into() },
        },
    };
    let body = cluster.path("oversized.json");
    std::fs::write(&body, serde_json::to_string(&synod_proto::SignedCommand::sign(&envelope, &admin)).unwrap())
        .unwrap();
    let (code, json) = post_commands(&cluster, &body);
    assert_eq!(code, "400", "{json}");
    let error = json["errors"][0].as_str().unwrap();
    let expected = format!(
        "field add_member.addr.raft_addr is {} bytes; the limit is {} (addr_bytes_max)",
        raft_addr.len(),
        synod_proto::limits::ADDR_BYTES_MAX
    );
    assert!(error.contains(&expected), "{error}");
    let status = cluster.status(1).unwrap();
    assert_eq!(status["last_log_index"].as_u64().unwrap(), index_before, "nothing was proposed");
    assert_eq!(status["rejected_commands"], 0);
}

/// A one-node cluster named `name` at init; with `admin_of`, signed for by that
/// cluster's admin key (copied before the node's config pins it).
fn start_named(name: &str, admin_of: Option<&Cluster>) -> Cluster {
    let mut cluster = Cluster::prepare(Options::default());
    if let Some(other) = admin_of {
        std::fs::copy(other.path("admin.pem"), cluster.path("admin.pem")).unwrap();
    }
    cluster.add_node_files(1);
    cluster.start_new_nodes(&[1]);
    let mut args = cluster.init_args();
    args.push(format!("--cluster-id={name}"));
    ok(&cluster.synod(1, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    cluster.wait_leader();
    cluster
}

#[test]
fn cluster_id_command_for_a_twin_cluster_with_the_same_name_and_admin_is_refused() {
    // Two clusters started with the same admin key and the same name get different ids,
    // derived from their genesis, and show the name as a label. A command the admin signed
    // for one is refused by the other, naming both ids, and commits nothing there; the CLI,
    // which learns the id from the node, keeps working on both.
    let a = start_named("twins", None);
    let b = start_named("twins", Some(&a));
    assert_eq!(a.admin_key_hex(), b.admin_key_hex());
    let (status_a, status_b) = (a.status(1).unwrap(), b.status(1).unwrap());
    assert_eq!(status_a["cluster_name"], "twins");
    assert_eq!(status_b["cluster_name"], "twins");
    let (id_a, id_b) = (status_a["cluster_id"].as_str().unwrap(), status_b["cluster_id"].as_str().unwrap());
    assert_ne!(id_a, id_b);
    assert_eq!(id_a.len(), 64, "{id_a}");

    let admin = synod_cli::operator::load_operator_key(&a.path("admin.pem")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let envelope = synod_proto::Envelope {
        cluster_id: id_a.to_string(),
        command_id: format!("{:032x}", now),
        issued_at_ms: now,
        expires_at_ms: now + 60_000,
        command: synod_proto::Command::Put { key: "from".into(), value: "cluster a".into() },
    };
    let body = b.path("for-a.json");
    std::fs::write(&body, serde_json::to_string(&synod_proto::SignedCommand::sign(&envelope, &admin)).unwrap())
        .unwrap();
    let index_before = status_b["last_log_index"].as_u64().unwrap();
    let (code, json) = post_commands(&b, &body);
    assert_eq!(code, "400", "{json}");
    let error = json["errors"][0].as_str().unwrap();
    assert!(error.contains(&format!("command is for cluster {id_a}, this is cluster {id_b}")), "{error}");
    assert_eq!(b.status(1).unwrap()["last_log_index"].as_u64().unwrap(), index_before, "nothing was proposed");
    let (code, json) = post_commands(&a, &body);
    assert_eq!(code, "200", "the command is good for the cluster it was signed for: {json}");

    b.put(1, "from", "cluster b").unwrap();
    assert!(ok(&b.synod(1, &["status"])).contains("name         twins"));
}
