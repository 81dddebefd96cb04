//! What the signing clients' requests are in (rules 9): raw bytes, SSHSIG
//! signed-data blobs in namespaces `git` and `file`, and minisign's
//! pre-hashed digest with a trusted comment (whose signature the state follows
//! with the global signature over it and the comment). [`KEY_NAME_FAULTS`]'s
//! policy allows SSHSIG in namespace [`KEY_FAULTS_NAMESPACE`] only
//! ([`key_faults_policy`], set when the key is created), so every request on
//! it is such a blob.
//!
//! Besides, the clients send probes the cluster must refuse ([`FormatProbe`]):
//! bytes declared SSHSIG that do not parse as SSHSIG, and an SSHSIG blob in
//! namespace `file` on [`KEY_NAME_FAULTS`]. They are recorded in
//! `History::format_probes` before they are sent; the formats checker
//! (`sim/src/checker/formats.rs`) fails a run in which any node's state ever
//! holds one it must not.

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use std::time::Duration;
use synod_proto::authz::Policy;
use synod_proto::format::SignFormat;
use synod_proto::sshsig::SignedData;

use synod_proto::api::ClientRequest;
use synod_proto::{NodeError, Outcome, SignedCommand};

use super::signing::formatted_sign_request;
use super::{call_node, written, ClientCtx, CALL_TIMEOUT, KEY_NAME, KEY_NAME_FAULTS};

/// The one SSHSIG namespace [`KEY_NAME_FAULTS`]'s policy allows.
pub const KEY_FAULTS_NAMESPACE: &str = "git";
/// Another SSHSIG namespace, which only [`KEY_NAME`] signs in.
pub const OTHER_NAMESPACE: &str = "file";
/// Of the requests on [`KEY_NAME`], the percent declaring SSHSIG in `git`, SSHSIG
/// in `file` and minisign (the rest are raw).
pub const SSHSIG_GIT_P: u64 = 15;
pub const SSHSIG_FILE_P: u64 = 15;
pub const MINISIGN_P: u64 = 20;
/// Percent of requests after which the client also sends a format probe (and
/// always after its third request and its first on [`KEY_NAME_FAULTS`]).
pub const FORMAT_PROBE_P: u64 = 10;

/// [`KEY_NAME_FAULTS`]'s policy: SSHSIG in namespace [`KEY_FAULTS_NAMESPACE`] only.
pub fn key_faults_policy() -> Policy {
    Policy {
        formats: vec![SignFormat::Sshsig],
        namespaces: vec![KEY_FAULTS_NAMESPACE.to_string()],
        ..Policy::default()
    }
}

/// A request's to-be-signed bytes and the format they declare.
#[derive(Clone, Debug)]
pub struct Shaped {
    /// `None`: raw, declared as before rules 9 (no format field).
    pub format: Option<SignFormat>,
    pub message: Vec<u8>,
    /// minisign only.
    pub trusted_comment: Option<String>,
}

impl Shaped {
    /// The next request's bytes for `key`: SSHSIG in `git` on [`KEY_NAME_FAULTS`]; on
    /// [`KEY_NAME`], raw, SSHSIG in `git` or `file`, or minisign.
    pub fn draw(key: &str, request_id: &str, rng: &mut ChaCha8Rng) -> Shaped {
        if key == KEY_NAME_FAULTS {
            return Shaped::sshsig(KEY_FAULTS_NAMESPACE, rng);
        }
        let draw = rng.next_u64() % 100;
        if draw < SSHSIG_GIT_P {
            Shaped::sshsig(KEY_FAULTS_NAMESPACE, rng)
        } else if draw < SSHSIG_GIT_P + SSHSIG_FILE_P {
            Shaped::sshsig(OTHER_NAMESPACE, rng)
        } else if draw < SSHSIG_GIT_P + SSHSIG_FILE_P + MINISIGN_P {
            Shaped::minisign(request_id, rng)
        } else {
            Shaped { format: None, message: super::signing::random_message(rng), trusted_comment: None }
        }
    }

    /// Other bytes in the same format (a second message under one request id).
    pub fn another(&self, rng: &mut ChaCha8Rng) -> Shaped {
        let mut other = match self.format {
            Some(SignFormat::Sshsig) => {
                let namespace = synod_proto::format::inspect(SignFormat::Sshsig, &self.message)
                    .ok()
                    .and_then(|i| i.namespace)
                    .unwrap_or_else(|| KEY_FAULTS_NAMESPACE.to_string());
                Shaped::sshsig(&namespace, rng)
            }
            Some(SignFormat::Minisign) => Shaped { message: digest(rng), ..self.clone() },
            _ => Shaped { format: None, message: super::signing::random_message(rng), trusted_comment: None },
        };
        if other.message == self.message {
            other.message[0] ^= 1;
        }
        other
    }

    /// `raw`, `sshsig/<namespace>` or `minisign`: what the run's report counts.
    pub fn label(&self) -> String {
        match self.format {
            None => "raw".into(),
            Some(SignFormat::Sshsig) => {
                let namespace =
                    synod_proto::format::inspect(SignFormat::Sshsig, &self.message).ok().and_then(|i| i.namespace);
                format!("sshsig/{}", namespace.unwrap_or_default())
            }
            Some(format) => format.name().to_string(),
        }
    }

    fn sshsig(namespace: &str, rng: &mut ChaCha8Rng) -> Shaped {
        let blob = SignedData { namespace: namespace.into(), hash_alg: "sha512".into(), hash: digest(rng) }.to_bytes();
        Shaped { format: Some(SignFormat::Sshsig), message: blob, trusted_comment: None }
    }

    fn minisign(request_id: &str, rng: &mut ChaCha8Rng) -> Shaped {
        let at_s = 1_700_000_000 + rng.next_u64() % 100_000_000;
        let comment = format!("timestamp:{at_s}\tfile:{request_id}.tar.gz\thashed");
        Shaped { format: Some(SignFormat::Minisign), message: digest(rng), trusted_comment: Some(comment) }
    }
}

/// A random 64-byte digest (SHA-512 of an SSHSIG file, BLAKE2b-512 of a minisign one).
fn digest(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut hash = vec![0u8; 64];
    rng.fill_bytes(&mut hash);
    hash
}

/// Why a probe must be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Bytes declared SSHSIG that do not parse as SSHSIG: every node refuses them
    /// (in `Command::validate`), so no state may ever hold the request.
    Malformed,
    /// An SSHSIG blob in namespace [`OTHER_NAMESPACE`] on [`KEY_NAME_FAULTS`],
    /// whose policy allows [`KEY_FAULTS_NAMESPACE`] only.
    ForbiddenNamespace,
}

/// A sign request the cluster must refuse for its format.
#[derive(Clone, Debug)]
pub struct FormatProbe {
    pub kind: ProbeKind,
    pub key: String,
    pub format: SignFormat,
    pub message: Vec<u8>,
    /// What the node that answered said, when one did: applied (the detail) or
    /// refused (why, from the state machine or the node's own check).
    pub answer: Option<Result<String, String>>,
}

/// Sends one probe after request `after` (once [`KEY_NAME_FAULTS`] is active, a
/// forbidden namespace when `kind` says so; a malformed blob otherwise), and
/// records what the cluster answered.
pub(super) async fn send_probe(ctx: &ClientCtx, rng: &mut ChaCha8Rng, after: &str, kind: ProbeKind) {
    let (request_id, key, message) = match kind {
        ProbeKind::Malformed => (format!("{after}-bad"), KEY_NAME, malformed_sshsig(rng)),
        ProbeKind::ForbiddenNamespace => {
            (format!("{after}-ns"), KEY_NAME_FAULTS, Shaped::sshsig(OTHER_NAMESPACE, rng).message)
        }
    };
    let probe = FormatProbe { kind, key: key.into(), format: SignFormat::Sshsig, message, answer: None };
    let command =
        formatted_sign_request(&request_id, key, &hex::encode(&probe.message), 1, Some(SignFormat::Sshsig), None);
    ctx.history.borrow_mut().format_probes.insert(request_id.clone(), probe);
    let signed: SignedCommand = ctx.sign(&ctx.admin, rng, command);
    let mut target = ctx.random_node(rng);
    let write = ClientRequest::Write { command: signed };
    let mut answer = None;
    for _ in 0..PROBE_ATTEMPTS {
        match call_node(&ctx.net, target, &write, CALL_TIMEOUT, written).await {
            Ok(Ok(response)) => {
                answer = Some(match response.outcome {
                    Outcome::Applied { detail } => Ok(detail),
                    Outcome::Rejected { reason, .. } => Err(reason),
                    Outcome::Internal => continue,
                });
                break;
            }
            Ok(Err(e)) if e.leader().is_some_and(|hint| hint.node_id != target) => {
                target = e.leader().map_or(target, |hint| hint.node_id);
            }
            // The node's own check (the leader's, or a follower's before it forwards).
            Ok(Err(e @ (NodeError::Invalid { .. } | NodeError::Refused { .. }))) => {
                answer = Some(Err(e.to_string()));
                break;
            }
            _ => {
                target = ctx.random_node(rng);
                tokio::time::sleep(Duration::from_millis(20 + rng.next_u64() % 80)).await;
            }
        }
    }
    ctx.event(format!("probe: {request_id} ({kind:?}) -> {answer:?}"));
    if let Some(probe) = ctx.history.borrow_mut().format_probes.get_mut(&request_id) {
        probe.answer = answer;
    }
}

/// How many nodes a probe tries before it gives up on an answer.
const PROBE_ATTEMPTS: u32 = 3;

/// Bytes declared SSHSIG that are not a signed-data blob: a blob cut short, one
/// with a trailing byte, or one whose magic is wrong.
fn malformed_sshsig(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut blob = Shaped::sshsig(KEY_FAULTS_NAMESPACE, rng).message;
    match rng.next_u64() % 3 {
        0 => blob.truncate(1 + (rng.next_u64() as usize) % (blob.len() - 1)),
        1 => blob.push(rng.next_u64() as u8),
        _ => blob[5] = b'H',
    }
    assert!(
        synod_proto::format::inspect(SignFormat::Sshsig, &blob).is_err(),
        "a malformed probe must not parse as SSHSIG"
    );
    blob
}
