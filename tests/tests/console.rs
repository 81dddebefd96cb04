//! The approver console's defences with a real node process, spoken to as a browser would
//! (curl over HTTPS, trusting the web CA) with the software authenticator of
//! `synod_proto::webauthn::soft`: its begins tell nobody who is an operator, a registration
//! the cluster would refuse costs no log entry, and a session lasts only as long as the
//! passkey it logged in with.

use std::process::Command as Process;
use std::time::Duration;

use serde_json::Value;
use synod_proto::webauthn::from_b64url;
use synod_proto::webauthn::soft::{SoftAlgorithm, SoftAuthenticator};
use synod_tests::{ok, wait_for, Cluster, Options};

/// The relying party the admins set: the console of a development cluster.
const RP_ID: &str = "localhost";
/// How long a read may take to show a committed write (generous: the machine is shared).
const CONVERGE: Duration = Duration::from_secs(30);

/// What the console answered.
struct Answer {
    code: u16,
    /// The JSON body (`Value::Null` for a page or a redirect).
    body: Value,
    /// The `Set-Cookie` header's `name=value`, if there is one.
    cookie: Option<String>,
    /// The `Location` header, if there is one.
    location: String,
}

/// A one-node cluster whose node serves the console, with the relying party set and alice,
/// an approver, added.
struct Console {
    cluster: Cluster,
    origin: String,
}

impl Console {
    fn start() -> Console {
        let mut cluster = Cluster::prepare(Options::default());
        let (ca, certs) = (cluster.path("ca"), cluster.path("certs"));
        let (ca_dir, out) = (ca.to_str().unwrap(), certs.to_str().unwrap());
        ok(&synod_tests::run_synod(
            &["ca", "issue", "console", "n1", "--dns", RP_ID, "--ca-dir", ca_dir, "--out", out],
            &[],
        ));
        cluster.add_node_files(1);
        cluster.add_console(1, &certs.join("console-n1.crt"), &certs.join("console-n1.key"));
        cluster.start_new_nodes(&[1]);
        let origin = cluster.console_origin(1).expect("a console");
        let init = cluster.init_args();
        ok(&cluster.synod(1, &init.iter().map(String::as_str).collect::<Vec<_>>()));
        cluster.wait_leader();
        ok(&cluster.synod(1, &["cluster", "webauthn", "set", "--rp-id", RP_ID, "--origin", &origin]));
        let (_, public) = cluster.keygen("alice");
        ok(&cluster.synod(1, &["operator", "add", "alice", "--key", &public, "--roles", "approver"]));
        Console { cluster, origin }
    }

    /// Calls the console as its pages do (the CSRF header on every call); a POST when `body`
    /// is given, else a GET; with the session `cookie` if given.
    fn call(&self, path: &str, body: Option<&Value>, cookie: Option<&str>) -> Answer {
        let port = self.origin.rsplit(':').next().unwrap();
        let mut curl = Process::new("curl");
        curl.args(["-sS", "--cacert", self.cluster.path("ca/web-ca.pem").to_str().unwrap()])
            .args(["-w", "\n%header{set-cookie}\n%header{location}\n%{http_code}"])
            .args(["--resolve", &format!("{RP_ID}:{port}:127.0.0.1")])
            .args(["-H", "content-type: application/json", "-H", "x-synod-console: 1"]);
        if let Some(body) = body {
            curl.args(["--data-binary", &body.to_string()]);
        }
        if let Some(cookie) = cookie {
            curl.args(["-H", &format!("cookie: {cookie}")]);
        }
        let out = curl.arg(format!("{}{path}", self.origin)).output().expect("curl is installed by scripts/test");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = text.rsplitn(4, '\n');
        let (Some(code), Some(location), Some(cookie), Some(answer)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("no answer from the console: {text} {}", String::from_utf8_lossy(&out.stderr));
        };
        Answer {
            code: code.parse().unwrap_or_else(|_| panic!("no status from the console: {text}")),
            body: serde_json::from_str(answer).unwrap_or(Value::Null),
            cookie: cookie.split(';').next().filter(|c| !c.is_empty()).map(str::to_string),
            location: location.to_string(),
        }
    }

    /// `operator` registers `passkey` as the registration page does; the finish's answer.
    fn register(&self, operator: &str, passkey: &SoftAuthenticator) -> Answer {
        let begun = self.call("/console/register/begin", Some(&serde_json::json!({ "operator": operator })), None);
        assert_eq!(begun.code, 200, "{}", begun.body);
        let challenge = from_b64url(begun.body["challenge"].as_str().expect("a challenge")).unwrap();
        let registration = passkey.register(RP_ID, &self.origin, &challenge);
        let body = serde_json::json!({ "operator": operator, "label": "laptop", "registration": registration });
        self.call("/console/register/finish", Some(&body), None)
    }

    /// `operator` logs in with `passkey` as the login page does; the finish's answer.
    fn login(&self, operator: &str, passkey: &mut SoftAuthenticator) -> Answer {
        let begun = self.call("/console/login/begin", Some(&serde_json::json!({ "operator": operator })), None);
        assert_eq!(begun.code, 200, "{}", begun.body);
        let challenge = from_b64url(begun.body["challenge"].as_str().expect("a challenge")).unwrap();
        let assertion = passkey.assert(RP_ID, &self.origin, &challenge);
        self.call(
            "/console/login/finish",
            Some(&serde_json::json!({ "operator": operator, "assertion": assertion })),
            None,
        )
    }

    /// Commands the node refused at apply so far (each a log entry).
    fn rejected_commands(&self) -> u64 {
        self.cluster.status(1).expect("a status")["rejected_commands"].as_u64().expect("rejected_commands")
    }

    /// alice's passkeys as the node lists them.
    fn passkeys(&self) -> Vec<Value> {
        let out = self.cluster.synod(1, &["operator", "passkey", "list", "--operator", "alice", "-o", "json"]);
        serde_json::from_str(&ok(&out)).unwrap()
    }
}

#[test]
fn console_hides_operators_refuses_registrations_unwritten_and_ends_sessions_with_their_passkey() {
    // Login and registration begins answer an operator and a stranger alike (a challenge, no
    // credential id); a registration the cluster would refuse (a stranger, a passkey already
    // registered) is answered without a log entry; a session reads pages until the admins
    // remove the passkey it logged in with, and ends at its next request after.
    let console = Console::start();
    for path in ["/console/login/begin", "/console/register/begin"] {
        let shapes: Vec<(u16, Vec<String>, Value)> = ["alice", "mallory"]
            .into_iter()
            .map(|operator| {
                let answer = console.call(path, Some(&serde_json::json!({ "operator": operator })), None);
                let mut keys: Vec<String> =
                    answer.body.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                keys.sort();
                (answer.code, keys, answer.body["credential_ids"].clone())
            })
            .collect();
        assert_eq!(shapes[0], shapes[1], "{path} answers alice and a stranger alike");
        assert_eq!(shapes[0].0, 200, "{path}");
    }

    let mut passkey = SoftAuthenticator::new(SoftAlgorithm::Es256, &mut rand_core::OsRng);
    let registered = console.register("alice", &passkey);
    assert_eq!(registered.code, 200, "{}", registered.body);
    let fingerprint = registered.body["fingerprint"].as_str().unwrap().to_string();
    wait_for("alice's passkey to wait for the admins", CONVERGE, || {
        console.passkeys().iter().any(|p| p["fingerprint"] == fingerprint.as_str()).then_some(())
    });

    let rejected = console.rejected_commands();
    let again = console.register("alice", &passkey);
    assert_eq!(again.code, 409, "{}", again.body);
    assert!(again.body["error"].as_str().unwrap().contains("already registered"), "{}", again.body);
    let stranger = console.register("mallory", &SoftAuthenticator::new(SoftAlgorithm::Es256, &mut rand_core::OsRng));
    assert_eq!(stranger.code, 409, "{}", stranger.body);
    assert!(stranger.body["error"].as_str().unwrap().contains("no operator named mallory"), "{}", stranger.body);
    assert_eq!(console.rejected_commands(), rejected, "a refused registration was written to the log");

    ok(&console.cluster.synod(1, &["operator", "passkey", "approve", "alice", &fingerprint]));
    wait_for("alice's passkey to be approved", CONVERGE, || {
        console.passkeys().iter().any(|p| p["state"] == "approved").then_some(())
    });
    let login = console.login("alice", &mut passkey);
    assert_eq!(login.code, 200, "{}", login.body);
    let cookie = login.cookie.expect("a login sets the session cookie");
    let page = console.call("/console/requests", None, Some(&cookie));
    assert_eq!(page.code, 200, "the session reads the list page");

    ok(&console.cluster.synod(1, &["operator", "passkey", "remove", "alice", &fingerprint]));
    wait_for("alice's passkey to be removed", CONVERGE, || console.passkeys().is_empty().then_some(()));
    let page = console.call("/console/requests", None, Some(&cookie));
    assert_eq!((page.code, page.location.as_str()), (303, "/console/login"), "the session outlived its passkey");
    let call = console.call("/console/requests/r1/statement", None, Some(&cookie));
    assert_eq!(call.code, 401, "{}", call.body);
}
