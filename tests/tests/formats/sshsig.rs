//! SSHSIG: `synod sign --format sshsig` files that `ssh-keygen -Y verify` accepts (small and
//! 1 GiB), and `synod agent` serving git's commit and tag signing.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha512};
use synod_tests::{fails, ok, synod_bin, Cluster};

use super::{cluster_with_key, write};

/// Runs `program` with `args` in `dir`, with `stdin` (a file) and `envs`; returns (success, stdout, stderr).
fn run(
    program: &str,
    args: &[&str],
    dir: &Path,
    stdin: Option<&Path>,
    envs: &[(&str, &str)],
) -> (bool, String, String) {
    let mut command = Command::new(program);
    command.args(args).current_dir(dir).stdin(match stdin {
        Some(path) => Stdio::from(std::fs::File::open(path).expect("open stdin file")),
        None => Stdio::null(),
    });
    for (name, value) in envs {
        command.env(name, value);
    }
    let out = command.output().unwrap_or_else(|e| panic!("{program} runs: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The key's `ssh-ed25519 AAAA...` line, from `synod key show --format openssh`.
fn openssh_line(cluster: &Cluster, key: &str) -> String {
    let line = ok(&cluster.synod(1, &["key", "show", key, "--format", "openssh"]));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(words.len() >= 2 && words[0] == "ssh-ed25519", "{line}");
    format!("{} {}", words[0], words[1])
}

/// `synod request show ID -o json`.
fn request(cluster: &Cluster, id: &str) -> Value {
    serde_json::from_str(&ok(&cluster.synod(1, &["request", "show", id, "-o", "json"]))).expect("request JSON")
}

/// `ssh-keygen -Y verify` of `file` against `sig` for principal "signer" in namespace `ns`.
fn keygen_verifies(dir: &Path, allowed: &Path, ns: &str, sig: &Path, file: &Path) -> (bool, String) {
    let args = ["-Y", "verify", "-f", path(allowed), "-I", "signer", "-n", ns, "-s", path(sig)];
    let (ok, out, err) = run("ssh-keygen", &args, dir, Some(file), &[]);
    (ok, format!("{out}{err}"))
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn sshsig_file_verifies_with_ssh_keygen() {
    // Proves a file signed with `synod sign --format sshsig` is accepted by `ssh-keygen -Y verify`
    // and `-Y check-novalidate` and by `synod verify`, that one changed byte is rejected by both,
    // and that the nodes recorded the namespace and the file's SHA-512 from the signed bytes.
    let cluster = cluster_with_key("release");
    let content = b"release notes for 1.0\n".to_vec();
    let file = write(&cluster, "notes.txt", &content);
    let sig = cluster.path("notes.txt.sig");
    let args =
        ["sign", "release", "--format", "sshsig", "--namespace", "file", "--in", path(&file), "--out", path(&sig)];
    let out = ok(&cluster.synod(1, &[&args[..], &["--request-id", "sshsig-notes", "-o", "json"]].concat()));
    let signed: Value = serde_json::from_str(&out).expect("sign JSON");
    assert_eq!(signed["request_id"], "sshsig-notes", "{signed}");
    let armored = std::fs::read_to_string(&sig).unwrap();
    assert!(
        armored.starts_with("-----BEGIN SSH SIGNATURE-----\n") && armored.ends_with("-----END SSH SIGNATURE-----\n")
    );
    assert!(armored.lines().all(|line| line.len() <= 70), "{armored}");
    assert_eq!(signed["signature"], armored.as_str());

    let key_line = openssh_line(&cluster, "release");
    let allowed = write(&cluster, "allowed_signers", format!("signer {key_line}\n").as_bytes());
    let dir = cluster.dir.path();
    let (accepted, said) = keygen_verifies(dir, &allowed, "file", &sig, &file);
    assert!(accepted, "ssh-keygen -Y verify refused: {said}");
    let (accepted, _, said) =
        run("ssh-keygen", &["-Y", "check-novalidate", "-n", "file", "-s", path(&sig)], dir, Some(&file), &[]);
    assert!(accepted, "ssh-keygen -Y check-novalidate refused: {said}");
    let (accepted, said) = keygen_verifies(dir, &allowed, "git", &sig, &file);
    assert!(!accepted, "ssh-keygen accepted the signature in another namespace: {said}");

    let mut changed = content.clone();
    changed[3] ^= 0x01;
    let tampered = write(&cluster, "notes-tampered.txt", &changed);
    let (accepted, said) = keygen_verifies(dir, &allowed, "file", &sig, &tampered);
    assert!(!accepted, "ssh-keygen accepted a changed file: {said}");

    let verify = |input: &Path, ns: &str, key: &[&str]| {
        let args: Vec<&str> =
            ["verify", "--format", "sshsig", "--namespace", ns, "--in", path(input), "--signature", path(&sig)]
                .into_iter()
                .chain(key.iter().copied())
                .collect();
        cluster.synod(1, &args)
    };
    let said = ok(&verify(&file, "file", &["--key", "release"]));
    assert!(said.contains("signature is valid (sshsig") && said.contains("key version 1"), "{said}");
    ok(&verify(&file, "file", &["--public-key", &key_line]));
    // Without --signature, FILE.sig is read, as ssh-keygen -Y sign names it.
    ok(&cluster
        .synod(1, &["verify", "--format", "sshsig", "--namespace", "file", "--in", path(&file), "--key", "release"]));
    let refused = fails(&verify(&tampered, "file", &["--key", "release"]));
    assert!(refused.contains("does not verify"), "{refused}");
    let refused = fails(&verify(&file, "git", &["--key", "release"]));
    assert!(refused.contains("namespace \"file\""), "{refused}");
    let stranger = hex::encode(ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key().to_bytes());
    let refused = fails(&verify(&file, "file", &["--public-key", &stranger]));
    assert!(refused.contains("which is not the given key"), "{refused}");

    let info = request(&cluster, "sshsig-notes");
    let format = &info["format"];
    assert_eq!(format["format"], "sshsig", "{info}");
    assert_eq!(format["namespace"], "file", "{info}");
    assert_eq!(format["artifact_hash"], format!("sha512:{}", hex::encode(Sha512::digest(&content))), "{info}");
    assert_eq!(signed["artifact_hash"], format["artifact_hash"]);
}

#[test]
fn sshsig_one_gib_file() {
    // Proves a 1 GiB file signs without reaching the cluster: the request carries only the
    // SSHSIG signed data (under 1 KiB), and ssh-keygen verifies the 1 GiB file.
    let cluster = cluster_with_key("big");
    let file = cluster.path("big.bin");
    // A sparse file reads as zeros without taking disk space.
    std::fs::File::create(&file).unwrap().set_len(1 << 30).unwrap();
    let sig = cluster.path("big.bin.sig");
    let args = ["sign", "big", "--format", "sshsig", "--namespace", "file", "--in", path(&file), "--out", path(&sig)];
    ok(&cluster.synod(1, &[&args[..], &["--request-id", "sshsig-big"]].concat()));
    let info = request(&cluster, "sshsig-big");
    let message_bytes = info["message_bytes"].as_u64().expect("message_bytes");
    assert!(message_bytes < 1024, "{info}");
    assert_eq!(info["format"]["namespace"], "file", "{info}");

    let allowed = write(&cluster, "allowed_signers", format!("signer {}\n", openssh_line(&cluster, "big")).as_bytes());
    let (accepted, said) = keygen_verifies(cluster.dir.path(), &allowed, "file", &sig, &file);
    std::fs::remove_file(&file).unwrap();
    assert!(accepted, "ssh-keygen -Y verify refused the 1 GiB file: {said}");
}

/// A `synod agent` child process, stopped (SIGTERM) when dropped.
struct AgentProc {
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
}

impl AgentProc {
    /// Starts `synod agent` for `keys` against node 1, waiting at most `approval_wait_secs`
    /// for approvals, and waits for its ready line.
    fn start(cluster: &Cluster, keys: &[&str], approval_wait_secs: &str) -> AgentProc {
        let socket = cluster.path("agent.sock");
        let stderr = cluster.path("agent.stderr");
        let mut command = Command::new(synod_bin());
        command.args(["agent", "--socket", path(&socket), "--approval-wait-secs", approval_wait_secs]);
        for key in keys {
            command.args(["--key", key]);
        }
        command
            .env_remove("SYNOD_ADDR")
            .env_remove("SYNOD_OPERATOR_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()));
        for (name, value) in cluster.env(1) {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start synod agent");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("agent stdout")).read_line(&mut ready).unwrap();
        let agent = AgentProc { child, socket, stderr };
        let expected = format!("synod agent listening on {0}; export SSH_AUTH_SOCK={0}", agent.socket.display());
        assert_eq!(ready.trim_end(), expected, "agent stderr: {}", agent.stderr_text());
        agent
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Stops the agent with SIGTERM; returns whether it exited cleanly.
    fn stop(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().map(|status| status.success()).unwrap_or(false)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// Sends one agent-protocol message (type byte and body) and returns the reply's type byte.
fn agent_exchange(socket: &Path, message_type: u8, body: &[u8]) -> u8 {
    let mut stream = UnixStream::connect(socket).expect("connect to the agent");
    let len = u32::try_from(body.len() + 1).unwrap();
    stream.write_all(&[&len.to_be_bytes()[..], &[message_type], body].concat()).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply).unwrap();
    reply[0]
}

/// An SSH `string`.
fn string(bytes: &[u8]) -> Vec<u8> {
    [&u32::try_from(bytes.len()).unwrap().to_be_bytes()[..], bytes].concat()
}

#[test]
fn sshsig_git_commit_and_tag_through_the_agent() {
    // Proves git signs commits and tags through `synod agent` (gpg.format=ssh) and verifies
    // them, an edited signed commit fails verification, the agent lists exactly its key,
    // refuses SSH authentication data without --allow-ssh-auth and refuses to change its keys,
    // records the SSHSIG namespace as the purpose, and removes its socket on SIGTERM.
    const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
    const SSH_AGENT_FAILURE: u8 = 5;

    let cluster = cluster_with_key("git-signing");
    let key_line = openssh_line(&cluster, "git-signing");
    // A second key whose policy needs alice's approval, which never comes.
    let (_, alice) = cluster.keygen("alice");
    ok(&cluster.synod(1, &["operator", "add", "alice", "--key", &alice, "--roles", "approver"]));
    ok(&cluster.synod(1, &["key", "create", "gated", "-t", "2"]));
    let policy = write(&cluster, "gated-policy.json", br#"{"approvers": ["alice"], "approvals_required": 1}"#);
    ok(&cluster.synod(1, &["key", "policy", "set", "gated", "--file", path(&policy)]));
    let gated_line = openssh_line(&cluster, "gated");
    let mut agent = AgentProc::start(&cluster, &["git-signing", "gated"], "2");
    let sock = path(&agent.socket).to_string();
    let home = cluster.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let envs = [("SSH_AUTH_SOCK", sock.as_str()), ("HOME", path(&home)), ("GIT_CONFIG_NOSYSTEM", "1")];

    let (listed, keys, said) = run("ssh-add", &["-L"], &home, None, &envs);
    assert!(listed, "ssh-add -L: {said}");
    assert_eq!(keys.trim_end(), format!("{key_line} synod:git-signing\n{gated_line} synod:gated"));
    let (removed, _, _) = run("ssh-add", &["-D"], &home, None, &envs);
    assert!(!removed, "the agent let ssh-add -D remove its keys");

    // SSH authentication data (RFC 4252: string(session id), byte 50, ...) is refused.
    let shown: Value =
        serde_json::from_str(&ok(&cluster.synod(1, &["key", "show", "git-signing", "-o", "json"]))).expect("key JSON");
    let public_key = hex::decode(shown["public_key"].as_str().expect("public key")).unwrap();
    let key_blob = [string(b"ssh-ed25519"), string(&public_key)].concat();
    let auth_data = [string(&[7; 32]), vec![50], string(b"git"), string(b"ssh-connection")].concat();
    let body = [string(&key_blob), string(&auth_data), 0u32.to_be_bytes().to_vec()].concat();
    assert_eq!(agent_exchange(&agent.socket, SSH_AGENTC_SIGN_REQUEST, &body), SSH_AGENT_FAILURE);
    assert!(agent.stderr_text().contains("--allow-ssh-auth"), "{}", agent.stderr_text());

    let repo = cluster.path("repo");
    let allowed = write(&cluster, "git_allowed_signers", format!("signer@example.com {key_line}\n").as_bytes());
    let git = |args: &[&str], stdin: Option<&Path>| run("git", args, &repo, stdin, &envs);
    std::fs::create_dir_all(&repo).unwrap();
    for args in [
        &["init", "-q"][..],
        &["config", "user.name", "Signer"],
        &["config", "user.email", "signer@example.com"],
        &["config", "gpg.format", "ssh"],
        &["config", "user.signingkey", &format!("key::{key_line}")],
        &["config", "gpg.ssh.allowedSignersFile", path(&allowed)],
    ] {
        let (done, _, said) = git(args, None);
        assert!(done, "git {args:?}: {said}");
    }
    std::fs::write(repo.join("README"), b"signed through the cluster\n").unwrap();
    for args in [&["add", "README"][..], &["commit", "-q", "-S", "-m", "x"], &["tag", "-s", "v1", "-m", "v1"]] {
        let (done, _, said) = git(args, None);
        assert!(done, "git {args:?}: {said}\nagent: {}", agent.stderr_text());
    }
    let (verified, _, said) = git(&["verify-commit", "HEAD"], None);
    assert!(verified, "git verify-commit: {said}");
    assert!(said.contains("Good \"git\" signature for signer@example.com"), "{said}");
    let (verified, _, said) = git(&["verify-tag", "v1"], None);
    assert!(verified, "git verify-tag: {said}");

    // The same signature on an edited commit does not verify.
    let (_, commit, _) = git(&["cat-file", "commit", "HEAD"], None);
    assert!(commit.ends_with("\nx\n"), "{commit}");
    let edited = write(&cluster, "edited-commit", format!("{}y\n", &commit[..commit.len() - 2]).as_bytes());
    let (stored, id, said) = git(&["hash-object", "-w", "-t", "commit", "--stdin"], Some(&edited));
    assert!(stored, "git hash-object: {said}");
    let (verified, _, said) = git(&["verify-commit", id.trim()], None);
    assert!(!verified, "git verified an edited commit: {said}");

    // A signature awaiting approvals fails once --approval-wait-secs expires, saying why.
    let gated_pub = write(&cluster, "gated.pub", format!("{gated_line}\n").as_bytes());
    let message = write(&cluster, "gated.txt", b"needs alice\n");
    let (signed, _, said) = run(
        "ssh-keygen",
        &["-Y", "sign", "-n", "file", "-U", "-f", path(&gated_pub), path(&message)],
        &home,
        None,
        &envs,
    );
    assert!(!signed, "ssh-keygen signed without the approval: {said}");
    let stderr = agent.stderr_text();
    assert!(stderr.contains("awaits approvals") && stderr.contains("still awaits approvals after 2 s"), "{stderr}");

    // Each signature was one sshsig request whose purpose names the namespace.
    let stderr = agent.stderr_text();
    let ids: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("synod agent: request "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(ids.len(), 2, "{stderr}");
    for id in ids {
        let info = request(&cluster, id);
        assert_eq!(info["purpose"], "ssh-agent: sshsig namespace git", "{info}");
        assert_eq!(info["format"]["format"], "sshsig", "{info}");
        assert_eq!(info["format"]["namespace"], "git", "{info}");
    }

    assert!(agent.stop(), "the agent did not stop cleanly: {}", agent.stderr_text());
    assert!(!agent.socket.exists(), "the agent left its socket behind");
}
