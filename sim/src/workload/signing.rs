//! The signing clients: once [`KEY_NAME`] is active, each signs messages
//! until the heal and then `signs_after_heal` more, every other request on
//! [`KEY_NAME_FAULTS`] once that is active. A message is raw random bytes (8
//! to 64) or declares a format (`formats.rs`: SSHSIG blobs, minisign digests,
//! whose global signature the client then follows); after some requests a
//! client also sends a format probe the cluster must refuse. A request
//! is followed until a node answers `signed` (reads to poll; a failed request
//! is sent again as a new command, same id and message). Now and then a
//! client re-sends a signed request (it must get the same signature) or, once
//! a request is committed, sends another message under its id (it must be
//! refused). Some requests on [`KEY_NAME`] declare a large amount and need
//! approvals: most are approved and followed until signed, the others are
//! withheld, followed for [`WITHHELD_FOLLOW_MS`] and abandoned.
//!
//! What they record, and who relies on it: the first message under every
//! request id (`History::sent`) is the only one `OneMessagePerRequest`
//! accepts and the one `SignaturesVerify` verifies over, and
//! `PolicyBeforeShares` allows a share only for a request a client sent; the
//! withheld ids (`History::withheld`) must never be taken up, shared for or
//! signed (`PolicyBeforeShares`); the requests not yet signed
//! (`History::sign_pending`) bound `SigningLiveness` and the driver's
//! liveness wait, and are what the approvers approve; every signature a client
//! was answered (`History::sign_acks`) must be the one every node stores
//! (`OneMessagePerRequest`); and what a client must never see
//! (`History::sign_anomalies`) fails `OneMessagePerRequest` at once.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::Digest;
use synod_proto::api::{RequestInfo, RequestStatus};
use synod_proto::format::SignFormat;
use synod_proto::NodeError;
use synod_proto::{Command, SignedCommand};

use super::formats::{send_probe, ProbeKind, Shaped, FORMAT_PROBE_P};
use super::{
    call_node, get_request, request_info, short, sign_call, Approval, ClientCtx, SentRequest, SignAck, AMOUNT,
    AMOUNT_APPROVAL_ABOVE, CALL_TIMEOUT, KEY_NAME, KEY_NAME_FAULTS,
};
use crate::net;

/// How long a client waits for one sign or request-read call (the node itself waits up to
/// [`net::SIGN_WAIT`] for the signature).
pub const SIGN_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A signing client pauses up to this long between requests, in ms. Each request
/// grows the replicated state, which every node's state hash covers at every
/// applied index: this paces the signing load.
pub const SIGN_PAUSE_MS_MAX: u64 = 100;
/// Probability that a client re-sends a signed request (same id, same message, a new
/// command): it must get the same signature back.
pub const SIGN_RETRY_P: u64 = 15;
/// Probability (percent) that a client, once a request is committed, sends another
/// message under the same request id: it must be refused and never signed.
pub const SIGN_CONFLICT_P: u64 = 4;
/// Percent of sign requests on [`KEY_NAME`] that declare a large amount (and so need approvals).
pub const LARGE_REQUEST_P: u64 = 30;
/// Percent of large requests the approvers leave unapproved: they must never be signed.
pub const WITHHELD_P: u64 = 40;
/// How long a client follows a request the approvers leave unapproved, in ms.
pub const WITHHELD_FOLLOW_MS: u64 = 1_500;
/// Percent of requests after which the client also sends a hostile one (and
/// always after its second request): signed
/// with an `issued_at` ten years ahead, so without the rules-4 bounds it would
/// hold a pending slot for ten years ([`crate::checker`]'s `requests-bounded`).
pub const HOSTILE_P: u64 = 5;
/// How often a client asks again for a minisign global signature that failed.
const GLOBAL_ASKS_AGAIN_MAX: u64 = 3;
/// How long a client follows minisign's global signature after its request is signed, in ms.
pub const GLOBAL_FOLLOW_MS: u64 = 5_000;
/// How far ahead the hostile request says it was issued.
const HOSTILE_AHEAD_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// A `sign_request` command declaring `amount` (see [`sim_policy`](super::sim_policy)). Built
/// from JSON rather than a struct literal so that it builds against every
/// version of `Command::SignRequest` that has these fields: later optional
/// fields take their defaults.
pub fn sign_request_command(request_id: &str, key: &str, message_hex: &str, amount: u64) -> Command {
    formatted_sign_request(request_id, key, message_hex, amount, None, None)
}

/// A `sign_request` command declaring `amount` and, when given, the format of
/// its message and minisign's trusted comment (rules 9).
pub fn formatted_sign_request(
    request_id: &str,
    key: &str,
    message_hex: &str,
    amount: u64,
    format: Option<SignFormat>,
    trusted_comment: Option<&str>,
) -> Command {
    let mut command = serde_json::json!({
        "type": "sign_request",
        "request_id": request_id,
        "key": key,
        "message": message_hex,
        "purpose": "sim",
        "attributes": { AMOUNT: amount.to_string() },
    });
    if let Some(format) = format {
        command["format"] = serde_json::json!(format);
    }
    if let Some(comment) = trusted_comment {
        command["trusted_comment"] = serde_json::json!(comment);
    }
    serde_json::from_value(command).expect("a sign_request command parses")
}

pub(super) fn random_message(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut message = vec![0u8; 8 + (rng.next_u64() % 57) as usize];
    rng.fill_bytes(&mut message);
    message
}

/// One request a signing client makes.
pub struct Ask<'a> {
    pub client: usize,
    pub key: &'a str,
    pub request_id: &'a str,
    pub message: &'a [u8],
    /// The declared amount (see [`sim_policy`](super::sim_policy)).
    pub amount: u64,
    pub approval: Approval,
    /// The format `message` declares (rules 9); raw when `None`.
    pub format: Option<SignFormat>,
    /// minisign only.
    pub trusted_comment: Option<&'a str>,
}

impl Ask<'_> {
    /// A new command asking for `message_hex` under this request's id.
    fn command(&self, ctx: &ClientCtx, rng: &mut ChaCha8Rng, message_hex: &str) -> SignedCommand {
        let command = formatted_sign_request(
            self.request_id,
            self.key,
            message_hex,
            self.amount,
            self.format,
            self.trusted_comment,
        );
        ctx.sign(&ctx.admin, rng, command)
    }
}

/// One signing client: once the key is active, signs random messages until the
/// heal, then `signs_after_heal` more. Each request is followed until a node
/// answers `signed`; now and then the client re-sends a signed request (it must
/// get the same signature) or sends another message under a committed request
/// id (it must be refused). Some requests on [`KEY_NAME`] declare a large
/// amount and need approvals: most are approved by the approvers (and followed
/// until signed), the others are followed for a while and abandoned.
pub async fn signing_client(ctx: ClientCtx, client: usize) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ (0x5167_0000 + client as u64));
    while !ctx.history.borrow().keys.contains_key(KEY_NAME) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut after_heal = 0;
    // Whether this client has sent a namespace probe yet (it sends one after its
    // first request on the restricted key, so that every run with that key has one).
    let mut namespace_probed = false;
    for seq in 0.. {
        if ctx.healed() {
            if after_heal == ctx.signs_after_heal {
                break;
            }
            after_heal += 1;
        }
        // Every other request uses the key generated under faults, once it is active.
        let key = if seq % 2 == 1 && ctx.history.borrow().keys.contains_key(KEY_NAME_FAULTS) {
            KEY_NAME_FAULTS
        } else {
            KEY_NAME
        };
        let request_id = format!("s{client}-{seq:04}");
        let shaped = Shaped::draw(key, &request_id, &mut rng);
        let message = shaped.message.clone();
        let large = key == KEY_NAME && rng.next_u64() % 100 < LARGE_REQUEST_P;
        let (amount, approval) = match (large, rng.next_u64() % 100 < WITHHELD_P) {
            (false, _) => (1 + rng.next_u64() % AMOUNT_APPROVAL_ABOVE, Approval::NotNeeded),
            (true, withheld) => (
                AMOUNT_APPROVAL_ABOVE + 1 + rng.next_u64() % 1_000_000,
                if withheld { Approval::Withheld } else { Approval::Given },
            ),
        };
        let ask = Ask {
            client,
            key,
            request_id: &request_id,
            message: &message,
            amount,
            approval,
            format: shaped.format,
            trusted_comment: shaped.trusted_comment.as_deref(),
        };
        *ctx.history.borrow_mut().format_counts.entry(shaped.label()).or_default() += 1;
        if approval == Approval::Withheld {
            follow_withheld(&ctx, &mut rng, &ask).await;
        } else {
            let signature = sign_until_signed(&ctx, &mut rng, &ask).await;
            if shaped.format == Some(SignFormat::Minisign) {
                follow_global(&ctx, &mut rng, &ask).await;
            }
            if rng.next_u64() % 100 < SIGN_RETRY_P {
                resend_signed(&ctx, &mut rng, &ask, &signature).await;
            }
        }
        if seq == 1 || rng.next_u64() % 100 < HOSTILE_P {
            send_far_ahead(&ctx, &mut rng, &request_id).await;
        }
        let first_on_faults_key = key == KEY_NAME_FAULTS && !namespace_probed;
        if seq == 3 || first_on_faults_key || rng.next_u64() % 100 < FORMAT_PROBE_P {
            let faults_key = ctx.history.borrow().keys.contains_key(KEY_NAME_FAULTS);
            let kind = if first_on_faults_key || (faults_key && rng.next_u64() % 2 == 0) {
                namespace_probed = true;
                ProbeKind::ForbiddenNamespace
            } else {
                ProbeKind::Malformed
            };
            send_probe(&ctx, &mut rng, &request_id, kind).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % SIGN_PAUSE_MS_MAX)).await;
    }
    let mut history = ctx.history.borrow_mut();
    history.clients_done += 1;
    history.signing_clients_done += 1;
    drop(history);
    ctx.event(format!("s{client}: done"));
    Ok(())
}

/// Records a request a client is about to send for the first time.
fn record_sent(ctx: &ClientCtx, ask: &Ask) {
    let mut history = ctx.history.borrow_mut();
    let sent = SentRequest {
        client: ask.client,
        message: ask.message.to_vec(),
        message_sha256: hex::encode(sha2::Sha256::digest(ask.message)),
        conflicts: Vec::new(),
        submitted_at_ms: ctx.now_ms(),
        approval: ask.approval,
        format: ask.format,
        trusted_comment: ask.trusted_comment.map(str::to_string),
    };
    history.sent.insert(ask.request_id.to_string(), sent);
    match ask.approval {
        Approval::Withheld => history.withheld.insert(ask.request_id.to_string()),
        _ => history.sign_pending.insert(ask.request_id.to_string(), ctx.now_ms()).is_none(),
    };
}

/// Sends a request the approvers leave unapproved and follows it for
/// [`WITHHELD_FOLLOW_MS`] after a node first shows it committed: it must stay
/// `awaiting_approval` (the checkers judge every node's state; the client's
/// view is traced).
async fn follow_withheld(ctx: &ClientCtx, rng: &mut ChaCha8Rng, ask: &Ask<'_>) {
    record_sent(ctx, ask);
    let signed = ask.command(ctx, rng, &hex::encode(ask.message));
    let mut committed_at: Option<u64> = None;
    let mut last = String::new();
    while committed_at.is_none_or(|at| ctx.now_ms() < at + WITHHELD_FOLLOW_MS) {
        let target = ctx.random_node(rng);
        let answer = if committed_at.is_none() {
            call_node(&ctx.net, target, &sign_call(&signed), SIGN_CALL_TIMEOUT, request_info).await
        } else {
            call_node(&ctx.net, target, &get_request(ask.request_id, Duration::ZERO), CALL_TIMEOUT, request_info).await
        };
        match answer {
            Ok(Ok(info)) => {
                committed_at.get_or_insert(ctx.now_ms());
                if info.status.to_string() != last {
                    ctx.event(format!(
                        "s{}: {} (withheld) is {} on n{target}",
                        ask.client, ask.request_id, info.status
                    ));
                    last = info.status.to_string();
                }
            }
            Ok(Err(NodeError::Refused { message })) if message.contains("replay") => {
                committed_at.get_or_insert(ctx.now_ms());
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.next_u64() % 200)).await;
    }
    ctx.event(format!("s{}: {} left unapproved", ask.client, ask.request_id));
}

/// Submits a sign request and follows it until a node answers `signed`; returns the signature.
async fn sign_until_signed(ctx: &ClientCtx, rng: &mut ChaCha8Rng, ask: &Ask<'_>) -> String {
    let (client, request_id, message) = (ask.client, ask.request_id, ask.message);
    let message_hex = hex::encode(message);
    let message_sha256 = hex::encode(sha2::Sha256::digest(message));
    let mut signed = ask.command(ctx, rng, &message_hex);
    record_sent(ctx, ask);
    // Submit (the same command again is idempotent while the request is pending
    // or signed), then poll with reads, which write nothing. A failed request is
    // retried with a new command (same id, same message), which starts a fresh
    // attempt; the same command again would be refused as a replay.
    let mut submit = true;
    let mut not_found = 0;
    let mut conflict_tried = false;
    let mut target = ctx.random_node(rng);
    loop {
        let answer = if submit {
            call_node(&ctx.net, target, &sign_call(&signed), SIGN_CALL_TIMEOUT, request_info).await
        } else {
            call_node(&ctx.net, target, &get_request(request_id, net::SIGN_WAIT), SIGN_CALL_TIMEOUT, request_info).await
        };
        match answer {
            Ok(Ok(info)) => {
                if info.message_sha256 != message_sha256 {
                    ctx.anomaly(format!(
                        "{request_id}: n{target} answered for message {} but the client sent {}",
                        short(&info.message_sha256),
                        short(&message_sha256)
                    ));
                }
                // The request is committed: now a second message under its id must be refused.
                if !conflict_tried && rng.next_u64() % 100 < SIGN_CONFLICT_P {
                    conflict_tried = true;
                    send_conflict(ctx, rng, ask).await;
                }
                match (info.status, info.signature) {
                    (RequestStatus::Signed, Some(signature)) => {
                        let mut history = ctx.history.borrow_mut();
                        history.sign_pending.remove(request_id);
                        let ack = SignAck {
                            request_id: request_id.to_string(),
                            signature: signature.clone(),
                            at_ms: ctx.now_ms(),
                            retry: false,
                        };
                        history.sign_acks.push(ack);
                        drop(history);
                        ctx.event(format!(
                            "s{client}: {request_id} signed by {:?} in {} sessions via n{target}: {}",
                            info.signers,
                            info.sessions,
                            short(&signature)
                        ));
                        return signature;
                    }
                    (RequestStatus::Signed, None) => {
                        ctx.anomaly(format!("{request_id}: n{target} answered signed without a signature"));
                    }
                    (RequestStatus::Failed, _) => {
                        ctx.event(format!(
                            "s{client}: {request_id} failed: {}; sending it again",
                            info.error.unwrap_or_default()
                        ));
                        submit = true;
                        signed = ask.command(ctx, rng, &message_hex);
                        tokio::time::sleep(Duration::from_millis(200 + rng.next_u64() % 200)).await;
                    }
                    // Pending (or awaiting approval): poll; a read waits for the outcome itself.
                    _ => {
                        submit = false;
                        not_found = 0;
                    }
                }
            }
            Ok(Err(NodeError::Conflict { message })) => {
                ctx.anomaly(format!("{request_id}: its own first message was refused as a second one: {message}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Err(NodeError::Refused { message })) if message.contains("replay") => {
                // This command was applied before (the request has failed since): a new one.
                signed = ask.command(ctx, rng, &message_hex);
                target = ctx.random_node(rng);
            }
            Ok(Err(NodeError::NotFound { .. })) if !submit => {
                // That node has not applied the request (yet); after a few misses, submit again.
                not_found += 1;
                submit = not_found >= 3;
                target = ctx.random_node(rng);
                tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await;
            }
            Ok(Err(e)) => {
                target = match e.leader() {
                    Some(hint) if hint.node_id != target => hint.node_id,
                    _ => ctx.random_node(rng),
                };
                tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await;
            }
            Err(_) => {
                target = ctx.random_node(rng);
                tokio::time::sleep(Duration::from_millis(20 + rng.next_u64() % 80)).await;
            }
        }
    }
}

/// Follows the global signature the state makes once a minisign request is
/// signed (request [`global_request_id`](synod_proto::format::minisign::global_request_id)
/// of the parent) for at most [`GLOBAL_FOLLOW_MS`]. A signed one is recorded as
/// acknowledged (`OneMessagePerRequest` then holds every node to it); every
/// outcome is counted (`minisign-global/signed`, `/failed`, `/unfinished`) for
/// the run's report. No client can send it again, so it is not held to the
/// signing liveness bound.
async fn follow_global(ctx: &ClientCtx, rng: &mut ChaCha8Rng, ask: &Ask<'_>) {
    let id = synod_proto::format::minisign::global_request_id(ask.request_id);
    let mut until = ctx.now_ms() + GLOBAL_FOLLOW_MS;
    let mut outcome = "unfinished";
    let mut asked_again = 0;
    while ctx.now_ms() < until {
        let target = ctx.random_node(rng);
        let read = get_request(&id, net::SIGN_WAIT);
        match call_node(&ctx.net, target, &read, SIGN_CALL_TIMEOUT, request_info).await {
            Ok(Ok(RequestInfo { status: RequestStatus::Signed, signature: Some(signature), .. })) => {
                let ack = SignAck { request_id: id.clone(), signature, at_ms: ctx.now_ms(), retry: false };
                ctx.history.borrow_mut().sign_acks.push(ack);
                outcome = "signed";
                break;
            }
            Ok(Ok(RequestInfo { status: RequestStatus::Failed, error, .. })) => {
                ctx.event(format!("s{}: {id} failed: {}", ask.client, error.unwrap_or_default()));
                outcome = "failed";
                if asked_again == GLOBAL_ASKS_AGAIN_MAX {
                    break;
                }
                // As the CLI does: send the signed request again, and the state makes a
                // fresh attempt at its global signature.
                asked_again += 1;
                let again = ask.command(ctx, rng, &hex::encode(ask.message));
                let target = ctx.random_node(rng);
                let _ = call_node(&ctx.net, target, &sign_call(&again), SIGN_CALL_TIMEOUT, request_info).await;
                until = ctx.now_ms() + GLOBAL_FOLLOW_MS;
            }
            _ => tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await,
        }
    }
    if asked_again > 0 {
        *ctx.history.borrow_mut().format_counts.entry("minisign-global/asked-again".into()).or_default() += asked_again;
    }
    ctx.event(format!("s{}: {id}, the global signature of {}, is {outcome}", ask.client, ask.request_id));
    *ctx.history.borrow_mut().format_counts.entry(format!("minisign-global/{outcome}")).or_default() += 1;
}

/// Sends another message under a committed request id; it must be refused.
async fn send_conflict(ctx: &ClientCtx, rng: &mut ChaCha8Rng, ask: &Ask<'_>) {
    let (client, request_id) = (ask.client, ask.request_id);
    let shaped = Shaped {
        format: ask.format,
        message: ask.message.to_vec(),
        trusted_comment: ask.trusted_comment.map(str::to_string),
    };
    let other = shaped.another(rng).message;
    let other_hex = hex::encode(&other);
    if let Some(sent) = ctx.history.borrow_mut().sent.get_mut(request_id) {
        sent.conflicts.push(other_hex.clone());
    }
    let signed = ask.command(ctx, rng, &other_hex);
    for _ in 0..5 {
        let target = ctx.random_node(rng);
        let answer = call_node(&ctx.net, target, &sign_call(&signed), SIGN_CALL_TIMEOUT, request_info).await;
        match answer {
            // Answered with the request under that id: accepted only if it now names the second message.
            Ok(Ok(info)) => {
                let other_sha256 = hex::encode(sha2::Sha256::digest(&other));
                if info.message_sha256 == other_sha256 {
                    ctx.anomaly(format!(
                        "{request_id}: a second message ({}) was accepted by n{target}: status {}",
                        short(&other_sha256),
                        info.status
                    ));
                } else {
                    ctx.event(format!(
                        "s{client}: second message under {request_id}: n{target} answered with the first one ({})",
                        info.status
                    ));
                }
                return;
            }
            // A conflict: refused as a second message; refused: an earlier attempt of
            // this very command was refused already and this one is a replay of it.
            Ok(Err(e @ (NodeError::Conflict { .. } | NodeError::Refused { .. }))) => {
                ctx.history.borrow_mut().conflicts_refused += 1;
                ctx.event(format!("s{client}: second message under {request_id} refused ({e})"));
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await,
        }
    }
}

/// Re-sends a signed request as a new command (same id, same message): the
/// answer must be the stored signature. A node that has not applied the
/// outcome within its wait answers from its stale state (`pending`, or
/// `failed` from an earlier attempt); that is asked again elsewhere.
async fn resend_signed(ctx: &ClientCtx, rng: &mut ChaCha8Rng, ask: &Ask<'_>, signature: &str) {
    let (client, request_id) = (ask.client, ask.request_id);
    let signed = ask.command(ctx, rng, &hex::encode(ask.message));
    for _ in 0..5 {
        let target = ctx.random_node(rng);
        let answer = call_node(&ctx.net, target, &sign_call(&signed), SIGN_CALL_TIMEOUT, request_info).await;
        match answer {
            Ok(Ok(RequestInfo { status: RequestStatus::Signed, signature: Some(again), .. })) => {
                let same = if again == signature { "the same signature" } else { "ANOTHER signature" };
                ctx.event(format!("s{client}: {request_id} re-sent via n{target}: {same}"));
                let ack =
                    SignAck { request_id: request_id.to_string(), signature: again, at_ms: ctx.now_ms(), retry: true };
                ctx.history.borrow_mut().sign_acks.push(ack);
                return;
            }
            Ok(Err(NodeError::Conflict { message })) => {
                ctx.anomaly(format!("{request_id}: re-sending the same message was refused: {message}"));
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await,
        }
    }
}

/// Sends a request signed as if issued ten years from now; the cluster must
/// refuse it (its outcome goes to the trace).
async fn send_far_ahead(ctx: &ClientCtx, rng: &mut ChaCha8Rng, after: &str) {
    let request_id = format!("{after}-far");
    let command = sign_request_command(&request_id, KEY_NAME, "00", 1);
    let issued = crate::cluster::EPOCH_MS + ctx.now_ms() + HOSTILE_AHEAD_MS;
    let envelope = synod_proto::Envelope::new(ctx.cluster_id.clone(), command, issued, 60_000, rng);
    let signed = SignedCommand::sign(&envelope, &ctx.admin);
    let target = (rng.next_u64() % ctx.nodes) + 1;
    let outcome = ctx.submit(super::Submission::Command(&signed), target, rng, 3).await.map(|r| r.outcome);
    ctx.event(format!("hostile: {request_id} issued ten years ahead -> {outcome:?}"));
}
