//! Passkey approvals with real node processes: an approval is a WebAuthn
//! assertion whose challenge is SHA-256 of the request's approval statement,
//! and every node judges it itself against the replicated relying party (RP
//! ID and origins) and the credential the admins approved. Each bad assertion
//! (replayed from another request, for another origin or RP ID, without user
//! verification, with a counter that went backwards, signed by another
//! credential) is refused by every node and audited; a good one counts. A
//! counted approval whose passkey the admins then remove, or whose origin they
//! drop, counts no more when the signers verify it again before their shares.
//! The console's login holds passkeys to the same rules, and the admin's CLI
//! approves a passkey by its fingerprint only.
//!
//! A browser's authenticator makes only good assertions, so these are made by
//! the software authenticator in `synod_proto::webauthn::soft`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command as Process;
use std::time::Duration;

use serde_json::Value;
use synod_cli::local;
use synod_proto::authz::ApprovalSignature;
use synod_proto::webauthn::soft::{SoftAlgorithm, SoftAuthenticator};
use synod_proto::webauthn::{from_b64url, statement_challenge, Assertion};
use synod_proto::{Command, Envelope, SignedCommand};
use synod_tests::{fails, ok, run_synod, wait_for, Cluster, Options};

/// The relying party the admins set: the console of a development cluster.
const RP_ID: &str = "localhost";
/// How long a read may take to show a write sent through another node (reads are local).
const CONVERGE: Duration = Duration::from_secs(30);

/// A 3-node cluster with a 2-of-3 key `treasury` whose policy needs one approval of alice or
/// bob; dave may request. Node 2 serves the approver console. The admins have set the relying
/// party, and alice (ES256) and bob (Ed25519) have each registered a passkey in the console
/// and had it approved by its fingerprint.
struct Setup {
    cluster: Cluster,
    cluster_id: String,
    keys: BTreeMap<&'static str, PathBuf>,
    /// Node 2's console, `https://localhost:PORT`: the one origin the cluster accepts.
    origin: String,
    alice: SoftAuthenticator,
    bob: SoftAuthenticator,
}

/// The node that serves the approver console.
const CONSOLE_NODE: u64 = 2;

fn setup(options: Options) -> Setup {
    let mut cluster = Cluster::prepare(options);
    for id in 1..=3 {
        cluster.add_node_files(id);
    }
    cluster.start_new_nodes(&[1, 3]);
    let origin = start_with_console(&mut cluster, CONSOLE_NODE);
    let init = cluster.init_args();
    ok(&cluster.synod(1, &init.iter().map(String::as_str).collect::<Vec<_>>()));
    cluster.wait_leader();

    ok(&cluster.synod(1, &["key", "create", "treasury", "-t", "2"]));
    let keys = cluster.add_operators(&[("alice", "approver"), ("bob", "approver"), ("dave", "requester")]);
    let policy = cluster.path("policy.json");
    std::fs::write(&policy, r#"{"requesters": ["dave"], "approvers": ["alice", "bob"], "approvals_required": 1}"#)
        .unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", "treasury", "--file", policy.to_str().unwrap()]));
    ok(&cluster.synod(1, &["cluster", "webauthn", "set", "--rp-id", RP_ID, "--origin", &origin]));
    let cluster_id = cluster.status(1).unwrap()["cluster_id"].as_str().unwrap().to_string();
    let setup = Setup {
        cluster,
        cluster_id,
        keys,
        origin,
        alice: SoftAuthenticator::new(SoftAlgorithm::Es256, &mut rand_core::OsRng),
        bob: SoftAuthenticator::new(SoftAlgorithm::Ed25519, &mut rand_core::OsRng),
    };
    for (operator, passkey) in [("alice", &setup.alice), ("bob", &setup.bob)] {
        let fingerprint = setup.register(operator, passkey);
        // The admin approves it by the fingerprint its owner read off the console.
        wait_for(&format!("node 1 to list {operator}'s pending passkey"), CONVERGE, || {
            let list = setup.passkeys(1, operator);
            list.iter().any(|p| p["state"] == "pending" && p["fingerprint"] == fingerprint.as_str()).then_some(())
        });
        ok(&setup.cluster.synod(1, &["operator", "passkey", "approve", operator, &fingerprint]));
        for node in 1..=3 {
            wait_for(&format!("node {node} to hold {operator}'s passkey approved"), CONVERGE, || {
                let list = setup.passkeys(node, operator);
                (list.len() == 1
                    && list[0]["state"] == "approved"
                    && list[0]["credential_id"] == passkey.credential_id())
                .then_some(())
            });
        }
    }
    setup
}

/// Starts node `id` with an approver console (a P-256 certificate for localhost from the web
/// CA); returns the console's origin. Its port is chosen as the harness chooses the node's
/// others, by binding port 0 and releasing it, so another process may take it first: the node
/// then exits saying so, and starts again on other ports.
fn start_with_console(cluster: &mut Cluster, id: u64) -> String {
    let (ca, certs) = (cluster.path("ca"), cluster.path("certs"));
    let name = format!("node-{id}");
    let (ca_dir, out) = (ca.to_str().unwrap(), certs.to_str().unwrap());
    ok(&run_synod(&["ca", "issue", "console", &name, "--dns", RP_ID, "--ca-dir", ca_dir, "--out", out], &[]));
    let (config, log) = (cluster.nodes[&id].config.clone(), cluster.nodes[&id].log.clone());
    for _ in 0..=local::PORT_MOVES_MAX {
        let port = local::free_addrs(1).expect("a free loopback port")[0].1.port();
        let text = std::fs::read_to_string(&config).unwrap();
        let node_part = text.split("[console]").next().unwrap().to_string();
        let section = format!(
            "[console]\nlisten = \"127.0.0.1:{port}\"\ncertificate = \"{out}/console-{name}.crt\"\n\
             key = \"{out}/console-{name}.key\"\n"
        );
        std::fs::write(&config, node_part + &section).unwrap();
        let logged_before = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        cluster.start_node(id);
        let port_taken = wait_for(&format!("node {id} to answer"), Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.get(logged_before..).is_some_and(|new| new.contains(local::PORT_TAKEN)) {
                return Some(true);
            }
            (!cluster.synod(id, &["health", "-o", "json"]).stdout.is_empty()).then_some(false)
        });
        if !port_taken {
            return format!("https://{RP_ID}:{port}");
        }
        cluster.kill(id);
        let (raft, api) = local::free_addrs(1).expect("free loopback ports")[0];
        local::move_listen(&config, raft, api).unwrap();
        let node = cluster.nodes.get_mut(&id).unwrap();
        (node.raft_addr, node.api_addr) = (raft.to_string(), api.to_string());
    }
    panic!("node {id} found no free ports for its console:\n{}", cluster.nodes[&id].log_text());
}

/// What the console answered a POST.
struct ConsoleAnswer {
    code: u16,
    body: Value,
    /// The `Set-Cookie` header, if the answer has one.
    set_cookie: Option<String>,
}

impl ConsoleAnswer {
    /// Asserts a refused login: 4xx, an error saying `needle`, and no session cookie.
    fn refused_login(&self, needle: &str) {
        assert!((400..500).contains(&self.code), "a login answered {} {}", self.code, self.body);
        let error = self.body["error"].as_str().unwrap_or_else(|| panic!("no error in {}", self.body));
        assert!(error.contains(needle), "the refusal {error:?} does not say {needle:?}");
        assert_eq!(self.set_cookie, None, "a refused login set a cookie: {error}");
    }
}

/// Asserts that a write was applied (not refused).
fn applied(answer: &Value) {
    assert_eq!(answer["outcome"], "applied", "{answer}");
}

impl Setup {
    /// A fresh envelope for `command`, valid for a minute.
    fn envelope(&self, command: Command) -> Envelope {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        Envelope {
            cluster_id: self.cluster_id.clone(),
            command_id: hex::encode(id),
            issued_at_ms: now,
            expires_at_ms: now + 60_000,
            command,
        }
    }

    /// `operator`'s passkeys as node `node` lists them (`synod operator passkey list`).
    fn passkeys(&self, node: u64, operator: &str) -> Vec<Value> {
        let out = self.cluster.synod(node, &["operator", "passkey", "list", "--operator", operator, "-o", "json"]);
        serde_json::from_str(&ok(&out)).unwrap()
    }

    /// `operator` registers `passkey` in the console as a browser would (begin, then finish
    /// with the registration made for the console's challenge); the fingerprint it shows.
    fn register(&self, operator: &str, passkey: &SoftAuthenticator) -> String {
        let begun = self.console_post("/console/register/begin", &serde_json::json!({ "operator": operator }));
        assert_eq!(begun["rp_id"], RP_ID, "{begun}");
        let challenge = from_b64url(begun["challenge"].as_str().expect("a challenge")).unwrap();
        let registration = passkey.register(RP_ID, &self.origin, &challenge);
        let body = serde_json::json!({ "operator": operator, "label": format!("{operator}'s laptop"), "registration": registration });
        let finished = self.console_post("/console/register/finish", &body);
        finished["fingerprint"].as_str().unwrap_or_else(|| panic!("no fingerprint in {finished}")).to_string()
    }

    /// POSTs `body` to the console's `path` with curl, trusting the web CA; the JSON answer,
    /// which must be a success.
    fn console_post(&self, path: &str, body: &Value) -> Value {
        let answer = self.console_call(path, body);
        assert_eq!(answer.code, 200, "console {path} answered {}", answer.body);
        answer.body
    }

    /// POSTs `body` to the console's `path` with curl, trusting the web CA, as the console's
    /// own pages do (with the CSRF header); whatever it answers.
    fn console_call(&self, path: &str, body: &Value) -> ConsoleAnswer {
        let port = self.origin.rsplit(':').next().unwrap();
        let out = Process::new("curl")
            .args(["-sS", "--cacert", self.cluster.path("ca/web-ca.pem").to_str().unwrap()])
            .args(["-w", "\n%header{set-cookie}\n%{http_code}"])
            .args(["--resolve", &format!("{RP_ID}:{port}:127.0.0.1")])
            .args(["-H", "content-type: application/json", "-H", "x-synod-console: 1"])
            .args(["--data-binary", &body.to_string()])
            .arg(format!("{}{path}", self.origin))
            .output()
            .expect("curl is installed by scripts/test");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = text.rsplitn(3, '\n');
        let (Some(code), Some(cookie), Some(answer)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("no answer from the console: {text} {}", String::from_utf8_lossy(&out.stderr));
        };
        ConsoleAnswer {
            code: code.parse().unwrap_or_else(|_| panic!("no status from the console: {text}")),
            body: serde_json::from_str(answer).unwrap_or_else(|_| panic!("console {path} answered no JSON: {answer}")),
            set_cookie: (!cookie.is_empty()).then(|| cookie.to_string()),
        }
    }

    /// GETs the console's `path` with the session `cookie` (a `Set-Cookie` value); the status.
    fn console_get(&self, path: &str, cookie: &str) -> u16 {
        let port = self.origin.rsplit(':').next().unwrap();
        let pair = cookie.split(';').next().unwrap();
        let out = Process::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--cacert", self.cluster.path("ca/web-ca.pem").to_str().unwrap()])
            .args(["--resolve", &format!("{RP_ID}:{port}:127.0.0.1")])
            .args(["-H", &format!("cookie: {pair}")])
            .arg(format!("{}{path}", self.origin))
            .output()
            .expect("curl is installed by scripts/test");
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        code.parse().unwrap_or_else(|_| panic!("no status from the console: {code}"))
    }

    /// `operator` logs in to the console with `passkey` as the login page does: begin, then
    /// finish with an assertion over the challenge. The refusal of `begin` when it refuses.
    fn login(&self, operator: &str, passkey: &mut SoftAuthenticator) -> ConsoleAnswer {
        let begun = self.console_call("/console/login/begin", &serde_json::json!({ "operator": operator }));
        if begun.code != 200 {
            return begun;
        }
        let challenge = from_b64url(begun.body["challenge"].as_str().expect("a challenge")).unwrap();
        let assertion = passkey.assert(RP_ID, &self.origin, &challenge);
        self.console_call("/console/login/finish", &serde_json::json!({ "operator": operator, "assertion": assertion }))
    }

    /// `approver`'s passkey approval of `request_id`, posted to node `via`. Anyone may
    /// submit an approval (its authority is the assertion), so a throwaway key signs the
    /// command.
    fn approve(&self, via: u64, request_id: &str, approver: &str, assertion: Assertion) -> Value {
        let command = Command::Approve {
            request_id: request_id.into(),
            approver: approver.into(),
            signature: ApprovalSignature::web_authn(assertion),
        };
        let throwaway = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        self.post(via, &SignedCommand::sign(&self.envelope(command), &throwaway))
    }

    /// POSTs a signed command to node `via`'s `/v1/commands` with curl; the answer's JSON.
    fn post(&self, via: u64, signed: &SignedCommand) -> Value {
        let env: BTreeMap<&str, String> = self.cluster.env(via).into_iter().collect();
        let body = self.cluster.path("command.json");
        std::fs::write(&body, serde_json::to_vec(signed).unwrap()).unwrap();
        let out = Process::new("curl")
            .args(["-sS", "--cacert", &env["SYNOD_CACERT"]])
            .args(["--cert", &env["SYNOD_CLIENT_CERT"], "--key", &env["SYNOD_CLIENT_KEY"]])
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(format!("{}/v1/commands", env["SYNOD_ADDR"]))
            .output()
            .expect("curl is installed by scripts/test");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not a JSON answer: {text}"))
    }

    /// dave asks for a signature under `treasury`; the request must await approval.
    fn request(&self, id: &str) {
        let msg = self.cluster.path(&format!("{id}.msg"));
        std::fs::write(&msg, format!("pay 1200 EUR for {id}")).unwrap();
        let args = [
            "request",
            "sign",
            "treasury",
            "--in",
            msg.to_str().unwrap(),
            "--request-id",
            id,
            "--attr",
            "amount=1200",
            "-o",
            "json",
        ];
        let out: Value = serde_json::from_str(&ok(&self.cluster.synod_as(1, &self.keys["dave"], &args))).unwrap();
        assert_eq!(out["status"], "awaiting_approval", "{out}");
    }

    /// The challenge an approval of `id` signs: SHA-256 of its statement, as
    /// `synod request statement` writes it.
    fn challenge(&self, id: &str) -> [u8; 32] {
        let file = self.cluster.path(&format!("{id}.statement"));
        ok(&self.cluster.synod(2, &["request", "statement", id, "--out", file.to_str().unwrap()]));
        statement_challenge(&std::fs::read(&file).unwrap())
    }

    /// Request `id` as node `node` sees it, once that node has it.
    fn show(&self, node: u64, id: &str) -> Value {
        wait_for(&format!("node {node} to show request {id}"), CONVERGE, || {
            let out = self.cluster.synod(node, &["request", "show", id, "-o", "json"]);
            out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
        })
    }

    /// Asserts that every node refused the approval committed at `index` saying
    /// `needle`: it is in the node's recent rejections and in its audit log, as a
    /// refused approval of `request_id`, and the request still awaits approval there
    /// with no approval counted.
    fn refused_everywhere(&self, answer: &Value, request_id: &str, needle: &str) {
        assert_eq!(answer["outcome"], "rejected", "{answer}");
        let reason = answer["reason"].as_str().unwrap();
        assert!(reason.contains(needle), "the refusal {reason:?} does not say {needle:?}");
        let index = answer["index"].as_u64().expect("a refused approval is committed, so it is audited");
        for node in 1..=3 {
            let rejection = wait_for(&format!("node {node} to refuse entry {index}"), CONVERGE, || {
                let status = self.cluster.status(node)?;
                status["recent_rejections"].as_array()?.iter().find(|r| r["index"] == index).cloned()
            });
            assert_eq!(rejection["kind"], "approve", "node {node}: {rejection}");
            assert_eq!(rejection["reason"], reason, "node {node} judged entry {index} otherwise");
            let audit: Value = serde_json::from_str(&ok(&self
                .cluster
                .synod(node, &["audit", "list", "--limit", "1000", "-o", "json"])))
            .unwrap();
            let record = audit
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["index"] == index)
                .unwrap_or_else(|| panic!("node {node} has no audit record of entry {index}: {audit}"));
            assert_eq!(record["kind"], "approve", "node {node}: {record}");
            assert_eq!(record["result"], "refused", "node {node}: {record}");
            assert_eq!(record["request_id"], request_id, "node {node}: {record}");
            assert!(record["detail"].as_str().unwrap().contains(needle), "node {node}: {record}");
            let info = self.show(node, request_id);
            assert_eq!(info["status"], "awaiting_approval", "node {node}: {info}");
            assert_eq!(info["approvals"], serde_json::json!([]), "node {node}: {info}");
            assert!(info["signature"].is_null(), "node {node}: {info}");
        }
    }

    /// Sets `treasury`'s policy to need both alice and bob. One passkey approval then leaves a
    /// request awaiting approval, so no honest leader coordinates it (and signs it) before a
    /// test changes what that approval is judged by; and a signer's refusal tells the approvals
    /// it counts itself (0/2) from those the log counted (1/2).
    fn needs_two_approvals(&self) {
        let policy = self.cluster.path("policy-two.json");
        let text = r#"{"requesters": ["dave"], "approvers": ["alice", "bob"], "approvals_required": 2}"#;
        std::fs::write(&policy, text).unwrap();
        ok(&self.cluster.synod(1, &["key", "policy", "set", "treasury", "--file", policy.to_str().unwrap()]));
    }

    /// alice approves each of `ids` with her passkey, validly; waits until every node counts
    /// her approval and the request still awaits the second.
    fn approved_by_alice_everywhere(&mut self, ids: &[&str]) {
        for id in ids {
            let challenge = self.challenge(id);
            let approval = self.alice.assert(RP_ID, &self.origin, &challenge);
            applied(&self.approve(2, id, "alice", approval));
            for node in 1..=3 {
                let info = wait_for(&format!("node {node} to count alice's approval of {id}"), CONVERGE, || {
                    let info = self.show(node, id);
                    (info["approvals"] == serde_json::json!(["alice"])).then_some(info)
                });
                assert_eq!(info["status"], "awaiting_approval", "node {node}: {info}");
            }
        }
    }

    /// Restarts every node built to skip the policy when it leads (a test-build fault): its
    /// coordinator takes up requests that lack approvals and its own signer releases shares
    /// for them, so only the followers' checks stand between it and a signature.
    fn restart_skipping_the_policy(&mut self) {
        self.cluster.options.faults = Some("skip-policy".into());
        for id in 1..=3 {
            assert!(self.cluster.stop(id), "node {id} did not stop cleanly");
            self.cluster.start_node(id);
        }
        self.cluster.wait_leader();
    }

    /// Waits until every node holds request `id` failed, unsigned and without approvals, the
    /// same failure everywhere, and checks that every follower refused its share counting none
    /// of the `need` approvals: the coordinator's own share (a leader that skips the policy)
    /// was not enough.
    fn refused_by_every_follower(&self, id: &str, need: u32) {
        let mut errors = Vec::new();
        for node in 1..=3 {
            let failed = wait_for(&format!("node {node} to hold {id} failed"), CONVERGE, || {
                let info = self.show(node, id);
                (info["status"] == "failed").then_some(info)
            });
            assert!(failed["signature"].is_null(), "node {node}: {failed}");
            assert_eq!(failed["approvals"], serde_json::json!([]), "node {node}: {failed}");
            errors.push(failed["error"].as_str().unwrap().to_string());
        }
        assert!(errors.iter().all(|e| *e == errors[0]), "the nodes hold different failures: {errors:?}");
        let error = &errors[0];
        let coordinator: u64 = error
            .strip_prefix("node ")
            .and_then(|rest| rest.split(':').next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("the failure names no coordinator: {error}"));
        for follower in (1..=3).filter(|node| *node != coordinator) {
            let refusal = format!("node {follower}: refused: request {id} lacks approvals: 0/{need}");
            assert!(error.contains(&refusal), "node {follower} did not refuse so: {error}");
        }
    }

    /// Waits until every node holds request `id` signed, approved by `approvers`.
    fn signed_everywhere(&self, id: &str, approvers: &[&str]) {
        for node in 1..=3 {
            let info = wait_for(&format!("node {node} to hold {id} signed"), CONVERGE, || {
                let info = self.show(node, id);
                (info["status"] == "signed").then_some(info)
            });
            assert_eq!(info["approvals"], serde_json::json!(approvers), "node {node}: {info}");
            assert_eq!(info["signature"].as_str().unwrap().len(), 128, "node {node}: {info}");
        }
    }
}

#[test]
fn passkeys_bad_assertions_are_refused_by_every_node_and_audited_and_a_good_one_signs() {
    // alice approves request A with her passkey (counter 10), and A is signed. Then for
    // request B: that same assertion replayed, assertions for another origin and another RP
    // ID, one without user verification, one whose counter went back to 5, and one signed by
    // a credential that is not hers are each refused by every node, audited, and leave B
    // unapproved. bob's passkey (Ed25519) then approves B, and B is signed.
    let mut s = setup(Options::default());
    s.request("pay-a");
    s.request("pay-b");
    let (a, b) = (s.challenge("pay-a"), s.challenge("pay-b"));

    s.alice.set_counter(10);
    let approval_of_a = s.alice.assert(RP_ID, &s.origin, &a);
    let answer = s.approve(2, "pay-a", "alice", approval_of_a.clone());
    applied(&answer);
    s.signed_everywhere("pay-a", &["alice"]);

    // Replayed: the approval of A, sent for B.
    let answer = s.approve(1, "pay-b", "alice", approval_of_a);
    s.refused_everywhere(&answer, "pay-b", "another challenge");

    // Made on a page of another origin (a phishing site), or for another relying party.
    let phished = s.alice.assert(RP_ID, "https://synod.example.net", &b);
    let answer = s.approve(1, "pay-b", "alice", phished);
    s.refused_everywhere(&answer, "pay-b", "origin");
    let elsewhere = s.alice.assert("example.net", &s.origin, &b);
    let answer = s.approve(1, "pay-b", "alice", elsewhere);
    s.refused_everywhere(&answer, "pay-b", "RP ID");

    // Touched but not verified (no PIN, no biometric).
    s.alice.user_verified = false;
    let unverified = s.alice.assert(RP_ID, &s.origin, &b);
    let answer = s.approve(3, "pay-b", "alice", unverified);
    s.refused_everywhere(&answer, "pay-b", "UV flag unset");
    s.alice.user_verified = true;

    // A counter below the 10 the cluster saw last: a cloned authenticator.
    s.alice.set_counter(5);
    let cloned = s.alice.assert(RP_ID, &s.origin, &b);
    let answer = s.approve(2, "pay-b", "alice", cloned);
    s.refused_everywhere(&answer, "pay-b", "counter");

    // Signed by another credential under alice's credential id.
    let mut mallory = SoftAuthenticator::new(SoftAlgorithm::Es256, &mut rand_core::OsRng);
    let forged = Assertion { credential_id: s.alice.credential_id(), ..mallory.assert(RP_ID, &s.origin, &b) };
    let answer = s.approve(1, "pay-b", "alice", forged);
    s.refused_everywhere(&answer, "pay-b", "does not verify");

    // A good approval still counts.
    let good = s.bob.assert(RP_ID, &s.origin, &b);
    let answer = s.approve(3, "pay-b", "bob", good);
    applied(&answer);
    s.signed_everywhere("pay-b", &["bob"]);
}

#[test]
fn passkeys_leader_that_skips_the_policy_gets_no_shares_for_a_forged_assertion() {
    // A request "approved" by a forged passkey assertion (well-formed, signed by a key that is
    // not alice's registered credential) is in the log, refused by every node. Every node is
    // then restarted built to skip the policy when it leads (a test-build fault): the leader
    // coordinates the request and offers its own share, but the followers check the approvals
    // themselves and refuse, so the request fails and no signature exists.
    let mut s = setup(Options::default());
    s.request("sneaky");
    let challenge = s.challenge("sneaky");
    let mut mallory = SoftAuthenticator::new(SoftAlgorithm::Es256, &mut rand_core::OsRng);
    let forged = Assertion { credential_id: s.alice.credential_id(), ..mallory.assert(RP_ID, &s.origin, &challenge) };
    let answer = s.approve(1, "sneaky", "alice", forged);
    s.refused_everywhere(&answer, "sneaky", "does not verify");

    // Only now the fault: a leader that skips the policy from the start would coordinate the
    // request, and fail it, before the forged approval reached the log.
    s.restart_skipping_the_policy();
    s.refused_by_every_follower("sneaky", 1);
}

#[test]
fn passkeys_followers_verify_approvals_again_and_refuse_once_the_passkey_is_removed() {
    // alice approves two requests with her passkey, validly: every node counts her approvals.
    // The admin then removes that passkey, and every node drops the approvals it made, so what
    // a request shows, what the leader coordinates and what signers count stay one: bob's
    // approval leaves the first request waiting for a second (it does not fail at the
    // signers). Every node is then restarted built to skip the policy when it leads (a
    // test-build fault): the leader coordinates the second request and offers its own share,
    // and each follower, counting no approval, releases none.
    let mut s = setup(Options::default());
    s.needs_two_approvals();
    s.request("ready");
    s.request("orphan");
    s.approved_by_alice_everywhere(&["ready", "orphan"]);

    let fingerprint = s.passkeys(1, "alice")[0]["fingerprint"].as_str().unwrap().to_string();
    ok(&s.cluster.synod(1, &["operator", "passkey", "remove", "alice", &fingerprint]));
    for node in 1..=3 {
        wait_for(&format!("node {node} to drop alice's passkey and its approvals"), CONVERGE, || {
            let dropped = ["ready", "orphan"].iter().all(|id| s.show(node, id)["approvals"] == serde_json::json!([]));
            (s.passkeys(node, "alice").is_empty() && dropped).then_some(())
        });
    }

    let challenge = s.challenge("ready");
    let approval = s.bob.assert(RP_ID, &s.origin, &challenge);
    applied(&s.approve(3, "ready", "bob", approval));
    for node in 1..=3 {
        let info = wait_for(&format!("node {node} to count bob's approval of ready"), CONVERGE, || {
            let info = s.show(node, "ready");
            (info["approvals"] == serde_json::json!(["bob"])).then_some(info)
        });
        assert_eq!(info["status"], "awaiting_approval", "node {node}: {info}");
        assert_eq!(info["approval_progress"], serde_json::json!(["1/2 from [alice, bob]"]), "node {node}: {info}");
    }

    s.restart_skipping_the_policy();
    s.refused_by_every_follower("orphan", 2);
}

#[test]
fn passkeys_followers_refuse_an_approval_made_on_an_origin_the_admins_dropped() {
    // alice approves a request with her passkey on the console's origin, validly. The admins
    // then set the relying party's origins to another console only (same RP ID, so the passkey
    // stays, but every node drops the approval made on the old origin), and every node is
    // restarted built to skip the policy when it leads: the leader coordinates the request,
    // and each follower, counting no approval, releases no share.
    let mut s = setup(Options::default());
    s.needs_two_approvals();
    s.request("moved");
    s.approved_by_alice_everywhere(&["moved"]);

    let elsewhere = format!("https://console.{RP_ID}:8443");
    ok(&s.cluster.synod(1, &["cluster", "webauthn", "set", "--rp-id", RP_ID, "--origin", &elsewhere]));
    for node in 1..=3 {
        wait_for(&format!("node {node} to hold the new origin"), CONVERGE, || {
            let out = ok(&s.cluster.synod(node, &["cluster", "webauthn", "show", "-o", "json"]));
            let config: Value = serde_json::from_str(&out).unwrap();
            (config["origins"] == serde_json::json!([elsewhere])).then_some(())
        });
        assert_eq!(s.passkeys(node, "alice").len(), 1, "node {node} dropped alice's passkey with the origin");
    }

    s.restart_skipping_the_policy();
    s.refused_by_every_follower("moved", 2);
}

#[test]
fn passkeys_console_login_refuses_pending_removed_unverified_and_cloned_passkeys_without_a_cookie() {
    // alice's passkey approves a request with counter 10, and a login with it sets a session
    // cookie. A login with a passkey still waiting for the admins, with one they removed,
    // without user verification, or with a counter not above the 10 the cluster took is
    // refused with a message saying why, and sets no cookie; a session opened with a passkey
    // the admins then remove ends.
    let mut s = setup(Options::default());
    s.request("pay-c");
    let challenge = s.challenge("pay-c");
    s.alice.set_counter(10);
    let approval = s.alice.assert(RP_ID, &s.origin, &challenge);
    applied(&s.approve(2, "pay-c", "alice", approval));
    s.signed_everywhere("pay-c", &["alice"]);

    // The authenticators move out of the setup, which the logins borrow.
    let placeholder = || SoftAuthenticator::new(SoftAlgorithm::Es256, &mut rand_core::OsRng);
    let (mut alice, mut bob) =
        (std::mem::replace(&mut s.alice, placeholder()), std::mem::replace(&mut s.bob, placeholder()));
    let good = s.login("alice", &mut alice);
    assert_eq!(good.code, 200, "{}", good.body);
    assert_eq!(good.body["operator"], "alice", "{}", good.body);
    let cookie = good.set_cookie.expect("a login sets the session cookie");
    assert!(cookie.starts_with("synod_console=") && cookie.contains("HttpOnly"), "{cookie}");

    // Registered in the console, not yet approved by the admins.
    let mut phone = SoftAuthenticator::new(SoftAlgorithm::Es256, &mut rand_core::OsRng);
    let fingerprint = s.register("alice", &phone);
    wait_for("the console node to list alice's pending passkey", CONVERGE, || {
        let list = s.passkeys(CONSOLE_NODE, "alice");
        list.iter().any(|p| p["state"] == "pending" && p["fingerprint"] == fingerprint.as_str()).then_some(())
    });
    s.login("alice", &mut phone).refused_login("not an approved passkey of an operator named alice");

    // Removed by the admins (bob has no passkey left): the session bob opened with it ends
    // (its pages send him to the login page), and he cannot log in again.
    let session = s.login("bob", &mut bob).set_cookie.expect("bob logs in while his passkey is approved");
    assert_eq!(s.console_get("/console/requests", &session), 200, "bob's session reads no page");
    let bobs = s.passkeys(1, "bob")[0]["fingerprint"].as_str().unwrap().to_string();
    ok(&s.cluster.synod(1, &["operator", "passkey", "remove", "bob", &bobs]));
    wait_for("the console node to drop bob's passkey", CONVERGE, || {
        s.passkeys(CONSOLE_NODE, "bob").is_empty().then_some(())
    });
    assert_eq!(s.console_get("/console/requests", &session), 303, "bob's session outlived his passkey");
    s.login("bob", &mut bob).refused_login("not an approved passkey of an operator named bob");

    // Touched but not verified (no PIN, no biometric).
    alice.user_verified = false;
    s.login("alice", &mut alice).refused_login("UV flag unset");
    alice.user_verified = true;

    // A counter not above the 10 the cluster took: a cloned authenticator.
    alice.set_counter(5);
    s.login("alice", &mut alice).refused_login("signature counter 5 is not above the 10 the cluster holds");
    alice.set_counter(10);
    s.login("alice", &mut alice).refused_login("signature counter 10 is not above the 10 the cluster holds");

    // The real authenticator, moving on, still logs in.
    alice.set_counter(20);
    let again = s.login("alice", &mut alice);
    assert_eq!(again.code, 200, "{}", again.body);
    assert!(again.set_cookie.is_some(), "{}", again.body);
}

#[test]
fn passkeys_cli_approves_by_fingerprint_only_removes_and_shows_the_relying_party() {
    // Approving takes the fingerprint (SHA256:…) the owner read off the console: a credential
    // id, a wrong fingerprint or another operator's name is refused by the CLI, a command
    // naming a wrong fingerprint by every node, and the passkey stays pending; the right one
    // approves it. `operator passkey remove` drops it, and `cluster
    // webauthn show` prints the relying party as a table and as JSON.
    let s = setup(Options::default());
    let phone = SoftAuthenticator::new(SoftAlgorithm::Ed25519, &mut rand_core::OsRng);
    let fingerprint = s.register("alice", &phone);
    wait_for("node 1 to list alice's pending passkey", CONVERGE, || {
        let list = s.passkeys(1, "alice");
        list.iter().any(|p| p["state"] == "pending" && p["fingerprint"] == fingerprint.as_str()).then_some(())
    });
    let refused = |args: &[&str], needle: &str| {
        let err = fails(&s.cluster.synod(1, args));
        assert!(err.contains(needle), "`synod {}` said {err:?}, not {needle:?}", args.join(" "));
    };
    let by_id = phone.credential_id();
    refused(&["operator", "passkey", "approve", "alice", &by_id], "by the fingerprint");
    let wrong = format!("SHA256:{}", "A".repeat(43));
    refused(&["operator", "passkey", "approve", "alice", &wrong], "alice has no pending passkey SHA256:AAAA");
    refused(&["operator", "passkey", "approve", "bob", &fingerprint], "bob has no pending passkey");
    // A client that skips the CLI's check: the command names the fingerprint the admins checked,
    // and every node refuses it when another key waits under that credential id.
    let admin = {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let pem = std::fs::read_to_string(s.cluster.path("admin.pem")).unwrap();
        ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap()
    };
    let command = Command::ApprovePasskey {
        operator: "alice".into(),
        credential_id: phone.credential_id(),
        fingerprint: wrong.clone(),
    };
    let answer = s.post(2, &SignedCommand::sign(&s.envelope(command), &admin));
    assert_eq!(answer["outcome"], "rejected", "{answer}");
    let reason = answer["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("has fingerprint {fingerprint}, not the {wrong}")), "{reason}");
    let pending = |node| s.passkeys(node, "alice").into_iter().filter(|p| p["state"] == "pending").count();
    assert_eq!(pending(1), 1, "a refused approval approved something");

    ok(&s.cluster.synod(1, &["operator", "passkey", "approve", "alice", &fingerprint]));
    for node in 1..=3 {
        wait_for(&format!("node {node} to hold alice's two passkeys approved"), CONVERGE, || {
            let list = s.passkeys(node, "alice");
            (list.len() == 2 && list.iter().all(|p| p["state"] == "approved")).then_some(())
        });
    }
    refused(&["operator", "passkey", "approve", "alice", &fingerprint], "alice has no pending passkey");

    ok(&s.cluster.synod(1, &["operator", "passkey", "remove", "alice", &fingerprint]));
    for node in 1..=3 {
        wait_for(&format!("node {node} to hold alice's first passkey only"), CONVERGE, || {
            let list = s.passkeys(node, "alice");
            (list.len() == 1 && list[0]["credential_id"] == s.alice.credential_id()).then_some(())
        });
    }
    refused(&["operator", "passkey", "remove", "alice", &fingerprint], "alice has no passkey");

    let table = ok(&s.cluster.synod(1, &["cluster", "webauthn", "show"]));
    assert!(table.contains(&format!("RP ID:   {RP_ID}\n")), "{table}");
    assert!(table.contains("RP name: Synod\n"), "{table}");
    assert!(table.contains(&format!("origin:  {}\n", s.origin)), "{table}");
    let json: Value = serde_json::from_str(&ok(&s.cluster.synod(3, &["cluster", "webauthn", "show", "-o", "json"])))
        .expect("webauthn show JSON");
    assert_eq!(json["rp_id"], RP_ID, "{json}");
    assert_eq!(json["rp_name"], "Synod", "{json}");
    assert_eq!(json["origins"], serde_json::json!([s.origin]), "{json}");
}
