//! State transfer between real nodes: a snapshot is installed only when enough
//! members vouch for it, whoever sends it and whatever term it claims.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::raft::InstallSnapshotRequest;
use openraft::{CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use synod_node::pki::{NodeIdentity, TlsMaterial};
use synod_node::raft::snapshot::{encode, Tail};
use synod_node::raft::state_machine::Applied;
use synod_node::state::ClusterState;
use synod_node::transport::quic::QuicTransport;
use synod_node::transport::PeerTransport;
use synod_proto::api::KvRecord;
use synod_proto::command::SnapshotPoint;
use synod_proto::rpc::{PeerRequest, PeerResponse, ShareAsk};
use synod_proto::{Command, Envelope, NodeAddr};
use synod_tests::{Cluster, Options};

/// The TLS material of node `id` of `cluster`, as a thief of its disk would hold it.
fn stolen_tls(cluster: &Cluster, id: u64) -> TlsMaterial {
    let p = |s: String| cluster.path(&s);
    TlsMaterial::load(&p("ca/ca.crt".into()), &p(format!("certs/node-{id}.crt")), &p(format!("certs/node-{id}.key")))
        .expect("node certificate")
}

#[test]
fn snapshot_forged_by_a_member_is_refused_and_no_share_released() {
    // A harness holding node 3's certificate and key sends nodes 1 and 2 a snapshot
    // under a much higher term: a state with an extra pending request and a record of
    // its own, endorsed by node 3 alone. Neither node installs it, adopts the term or
    // releases a share for the request, and each refusal names node 3.
    let cluster = Cluster::start_with(3, Options::default());
    cluster.wait_leader();
    cluster.put(1, "real", "yes").unwrap();
    cluster.wait_value(2, "real", "yes");
    let status = cluster.status(1).unwrap();
    let cluster_id = status["cluster_id"].as_str().unwrap().to_string();
    let term_before = status["term"].as_u64().unwrap();

    let tls = stolen_tls(&cluster, 3);
    let identity = NodeIdentity::from_tls(&tls).unwrap();
    let members: BTreeMap<u64, NodeAddr> = cluster
        .nodes
        .values()
        .map(|n| (n.id, NodeAddr { raft_addr: n.raft_addr.clone(), api_addr: n.api_addr.clone() }))
        .collect();
    let last = LogId::new(CommittedLeaderId::new(1_000, 3), 100_000);
    let voters = BTreeSet::from_iter(members.keys().copied());
    let membership = StoredMembership::new(Some(last), Membership::new(vec![voters], members.clone()));
    let mut state = ClusterState::default();
    state.cluster_id = Some(cluster_id.clone());
    state.ca_certificate = Some(hex::encode(tls.ca.as_ref()));
    state.members = members.clone();
    let record = KvRecord {
        key: "forged".into(),
        value: "yes".into(),
        version: 1,
        author: synod_proto::OperatorKey([0; 32]),
        updated_index: 99_999,
        updated_at_ms: 0,
    };
    state.kv.insert("forged".into(), record);
    state.pending_requests.insert("forged-request".into());
    let applied = Applied { last_applied: Some(last), last_membership: membership, state };
    let applied_json = serde_json::to_vec(&applied).unwrap();
    let point = SnapshotPoint {
        cluster_id: cluster_id.clone(),
        index: last.index,
        term: 1_000,
        state_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&applied_json)),
    };
    let endorse = Command::Endorse { node_id: 3, point };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let endorsement = identity.sign(&Envelope::new(&cluster_id, endorse, now, 60_000, &mut rand_core::OsRng));
    let data = encode(&applied_json, &Tail { audit: Vec::new(), endorsements: vec![endorsement] });
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: applied.last_membership.clone(),
        snapshot_id: "forged".into(),
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let transport: Arc<dyn PeerTransport> =
            Arc::new(QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &tls).unwrap());
        for target in [1, 2] {
            let addr = cluster.nodes[&target].raft_addr.clone();
            let request = InstallSnapshotRequest {
                vote: Vote::new_committed(1_000, 3),
                meta: meta.clone(),
                offset: 0,
                data: data.clone(),
                done: true,
            };
            let answer = transport
                .call(target, addr.clone(), PeerRequest::InstallSnapshot(request), Duration::from_secs(10))
                .await
                .unwrap();
            let PeerResponse::Refused(why) = answer else { panic!("node {target} answered {answer:?}") };
            assert!(why.contains("from node 3 refused"), "{why}");
            assert!(why.contains("1 of the 2 members"), "{why}");

            let ask = ShareAsk {
                request_id: "forged-request".into(),
                slot: 0,
                incarnation: String::new(),
                signing_package: String::new(),
                min_index: 0,
                generation: 0,
            };
            let answer = transport
                .call(target, addr, PeerRequest::SignShare { asks: vec![ask] }, Duration::from_secs(10))
                .await
                .unwrap();
            let PeerResponse::SignShare(answers) = answer else { panic!("node {target} answered {answer:?}") };
            assert!(answers[0].is_err(), "node {target} released a share for a request it never committed");
        }
    });

    for target in [1, 2] {
        let node = &cluster.nodes[&target];
        assert!(node.log_text().contains("refused a snapshot"), "node {target} logs the refusal");
        assert_eq!(cluster.get(target, "forged"), None, "node {target} installed the forged state");
        let status = cluster.status(target).unwrap();
        assert!(status["term"].as_u64().unwrap() < 1_000, "node {target} adopted the forged term: {status}");
        assert!(status["term"].as_u64().unwrap() >= term_before);
    }
    cluster.put(2, "after", "yes").unwrap();
    cluster.wait_value(1, "after", "yes");
}

#[test]
fn snapshot_installed_by_a_lagging_signer_pauses_its_shares_until_it_caught_up() {
    // Node 3 is stopped while the cluster moves on and purges its log, then restarted: it
    // catches up from an endorsed snapshot, pauses its signature shares until it has applied
    // an index a majority confirms, and then signs again: with node 2 down, the 2-of-3 key
    // signs only with node 3's share.
    let mut cluster = Cluster::start_with(
        3,
        Options { snapshot_every_entries: 10, logs_kept_after_snapshot: 2, ..Options::default() },
    );
    let out = synod_tests::ok(&cluster.synod(1, &["key", "create", "vault", "-t", "2", "--open-policy", "-o", "json"]));
    assert!(out.contains("active"), "{out}");
    cluster.stop(3);
    for i in 0..40 {
        cluster.put(1, &format!("k{i}"), "v").unwrap();
    }
    let status = cluster.status(1).unwrap();
    assert!(status["endorsed_point_index"].as_u64().unwrap_or(0) >= 30, "points are endorsed: {status}");
    assert!(status["purged_index"].as_u64().unwrap_or(0) > 10, "the log was purged: {status}");

    cluster.start_node(3);
    cluster.wait_value(3, "k39", "v");
    let log_file = cluster.nodes[&3].log.clone();
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    synod_tests::wait_for("node 3 to hear a majority", Duration::from_secs(30), || {
        log().contains("a majority confirmed a commit index").then_some(())
    });
    let text = log();
    let installed = text.find("installing a verified snapshot").expect("node 3 installed a snapshot");
    let paused = text[installed..].find("no signature shares until").expect("and paused its shares");
    assert!(text[installed + paused..].contains("a majority confirmed a commit index"));

    cluster.stop(2);
    let request = cluster.sign(1, "vault", b"pay 1", "pay-1").expect("signed with node 3's share");
    assert_eq!(request["status"], "signed", "{request}");
    assert!(log().contains("caught up to a majority-confirmed commit index; signing again"));
    assert!(cluster.status(3).unwrap()["signing_paused"].is_null());
}
