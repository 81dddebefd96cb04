//! From applied audit records to webhook notifications, with no I/O: the
//! records, the applied state, the webhooks and a small [`Watch`] carried from
//! one batch to the next decide them.
//!
//! The records' kinds give the events: `sign_request` gives awaiting_approval
//! when the request's policy still needs approvals; `approve`, approved;
//! `deny`, denied (and failed too when that denial failed the request);
//! `sign_result`, signed; `sign_failed` and `cancel_request`, failed. Expiry, and
//! a failure because the key stopped signing or its policy changed, have no
//! record of the request's own: the state fails such requests while it applies
//! an entry (expired ones just before it), at that entry's time, so their
//! `expired` or `failed` event belongs to the first record at or after that
//! time. The state read is newer than the records (it is updated before they are
//! written), so such a failure is seen in the batch of that record, or, when the
//! failing entry came after the last record read in the same millisecond, in the
//! next batch, which gives it to the remembered first record of that time
//! ([`Watch`]): every node ties it to the same record, whatever its batches.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};
use synod_proto::webhook::{Webhook, WebhookEvent};

use crate::state::{AuditRecord, ClusterState, RequestRecord, RequestStatus};

/// Domain tag of idempotency ids.
const ID_DOMAIN: &[u8] = b"synod/webhook/v1\0";

/// The prefix of an expired request's failure reason (`state::signing`).
const EXPIRED_REASON: &str = "expired before it was signed";
/// The failure reasons of requests failed by a record of their own (`state::authz`
/// `cancel_request` and `deny`, `state::signing` `sign_failed`).
const CANCELLED_REASON: &str = "cancelled by its requester";
const DENIED_PREFIX: &str = "denied by ";
const SIGN_FAILED_PREFIX: &str = "node ";

/// One notification for one webhook: what is POSTed to its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The webhook's name (status and metrics are kept by it).
    pub webhook: String,
    pub url: String,
    /// The idempotency id, also in the body and the `Idempotency-Key` header.
    pub id: String,
    pub event: WebhookEvent,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The JSON a receiver gets. `text` is one sentence for people, so a chat's
/// incoming-webhook URL (Slack, Mattermost) shows it as it is.
#[derive(Clone, Debug, Serialize)]
pub struct Payload {
    pub id: String,
    pub event: WebhookEvent,
    pub cluster_id: String,
    pub request_id: String,
    pub key: String,
    pub key_version: Option<u32>,
    pub purpose: String,
    pub environment: String,
    pub attributes: BTreeMap<String, String>,
    /// The requester's operator name (or the key in hex when the operator is gone).
    pub requester: String,
    /// The approvers whose approval the request still waits for.
    pub awaiting: Vec<String>,
    /// How the request stands against its policy: `1/2 from [alice, bob]`, one per requirement.
    pub progress: String,
    /// The audit record this notification comes from.
    pub audit_seq: u64,
    /// The log time of that record (ms since the epoch).
    pub at_ms: u64,
    pub text: String,
}

/// An event about one request, before it is matched against webhooks.
struct Event<'a> {
    event: WebhookEvent,
    record: &'a AuditRecord,
    request: &'a RequestRecord,
    /// What the sentence says after the request's description.
    what: String,
}

/// The requests that may yet fail without a record of their own (expire, or
/// fail with their key or policy), kept between batches so that a batch looks
/// at these, the pending requests and the requests its records name, not at
/// every request ever made. Not replicated: each node keeps its own.
#[derive(Debug, Default)]
pub struct Watch {
    /// Request ids that were pending, or failed after the last record seen.
    ids: BTreeSet<String>,
    /// Whether `ids` was filled from the whole state once (at the first batch).
    primed: bool,
    /// The first record of the newest time read: failures at that time found later
    /// belong to it.
    first_of_time: Option<AuditRecord>,
    /// The requests whose failure at that time has been given to it already.
    announced: BTreeSet<String>,
}

/// The notifications `records` give, in record order. `prev_time_ms` is the
/// time of the record before the first one (0 when there is none): an expiry
/// belongs to the first record of its time.
///
/// Cost under the state lock: nothing while the cluster has no webhook; the first
/// call with one walks every request once (to fill `watch`); each later one
/// O(records + pending requests + `watch`), and `watch` holds only requests
/// pending at the previous batch or failed since.
pub fn notifications(
    state: &ClusterState,
    records: &[AuditRecord],
    mut prev_time_ms: u64,
    watch: &mut Watch,
) -> Vec<Notification> {
    // Without webhooks nothing is sent and nothing is watched: the walk over every request
    // waits until there is one, and the watch starts again as after a restart.
    if state.webhooks.is_empty() {
        *watch = Watch::default();
        return Vec::new();
    }
    let anchor = watch.first_of_time.take().filter(|r| r.time_ms == prev_time_ms && !records.is_empty());
    // From the anchor's time when there is one, else just after the last record read
    // (from the first record's time when there was none: not the whole past).
    let from_ms = match (&anchor, prev_time_ms) {
        (Some(anchor), _) => anchor.time_ms,
        (None, 0) => records.first().map_or(0, |r| r.time_ms),
        (None, prev) => prev + 1,
    };
    let failed = failed_by_time(state, records, from_ms, watch);
    let mut events = Vec::new();
    // Failures at the time of the last record read before, which the state showed only
    // now (the entry that made them came after that record, in the same millisecond):
    // they belong to the first record of that time, remembered, as on every node.
    if let Some(anchor) = &anchor {
        for (request, reason) in failed.get(&anchor.time_ms).into_iter().flatten() {
            if watch.announced.insert(request.request_id.clone()) {
                events.extend(failed_without_record(anchor, request, reason));
            }
        }
    }
    let mut first_of_time = anchor.as_ref();
    for record in records {
        if record.time_ms > prev_time_ms {
            first_of_time = Some(record);
            watch.announced.clear();
            // An entry that wrote no record of its own may have failed some just before.
            let times = failed.range(prev_time_ms.saturating_add(1)..=record.time_ms);
            for (request, reason) in times.flat_map(|(_, failed)| failed) {
                watch.announced.insert(request.request_id.clone());
                events.extend(failed_without_record(record, request, reason));
            }
        }
        prev_time_ms = prev_time_ms.max(record.time_ms);
        events.extend(events_of(state, record));
    }
    watch.first_of_time = first_of_time.cloned();
    let Some(cluster_id) = state.cluster_id.as_deref() else { return Vec::new() };
    let audit_key = audit_key_id(state);
    let mut out = Vec::new();
    for event in events.iter().filter(|e| e.request.key_id != audit_key) {
        for webhook in state.webhooks.values() {
            out.extend(notification(state, cluster_id, webhook, event));
        }
    }
    out
}

/// The audit key's id: its checkpoint requests are the nodes' own and notify nobody.
fn audit_key_id(state: &ClusterState) -> String {
    state.key_by_name(synod_proto::authz::AUDIT_KEY_NAME).map(|k| k.id.clone()).unwrap_or_default()
}

/// Requests that failed at or after `from_ms`, with why, by the time they were
/// failed. Looks at the watched requests, the pending ones and those `records`
/// name (every request once, the first time), then keeps in `watch` those that
/// are pending or failed after the last record.
fn failed_by_time<'a>(
    state: &'a ClusterState,
    records: &[AuditRecord],
    from_ms: u64,
    watch: &mut Watch,
) -> BTreeMap<u64, Vec<(&'a RequestRecord, &'a str)>> {
    let Some(last) = records.last() else { return BTreeMap::new() };
    let mut candidates = std::mem::take(&mut watch.ids);
    if !watch.primed {
        candidates.extend(state.requests.keys().cloned());
        watch.primed = true;
    }
    candidates.extend(state.pending_requests.iter().cloned());
    candidates.extend(records.iter().filter_map(|r| r.request_id.clone()));
    let mut out: BTreeMap<u64, Vec<(&RequestRecord, &str)>> = BTreeMap::new();
    for id in candidates {
        let Some(request) = state.requests.get(&id) else { continue };
        let failed_at = match &request.status {
            RequestStatus::Failed { reason } => request.finished_at_ms.map(|at| (at, reason.as_str())),
            _ => None,
        };
        if let Some((at, reason)) = failed_at.filter(|(at, _)| *at >= from_ms) {
            out.entry(at).or_default().push((request, reason));
        }
        let later = failed_at.is_some_and(|(at, _)| at > last.time_ms);
        if state.pending_requests.contains(&id) || later {
            watch.ids.insert(id);
        }
    }
    out
}

/// The event of a request that failed at `record`'s time without a record of
/// its own: `expired`, or `failed` when its key stopped signing, its policy
/// changed or its requester was removed. A request failed by its own
/// `sign_failed`, `cancel_request` or `deny` record gets its event from that
/// record; the reason the state gave says which (so that whichever records a
/// batch holds, every node decides alike).
fn failed_without_record<'a>(record: &'a AuditRecord, request: &'a RequestRecord, reason: &str) -> Option<Event<'a>> {
    if reason.starts_with(EXPIRED_REASON) {
        let what = "expired before it was approved and signed".to_string();
        return Some(Event { event: WebhookEvent::Expired, record, request, what });
    }
    let denied_then = request.denials.last().is_some_and(|d| Some(d.at_ms) == request.finished_at_ms);
    let own = reason == CANCELLED_REASON
        || reason.starts_with(SIGN_FAILED_PREFIX)
        || (reason.starts_with(DENIED_PREFIX) && denied_then);
    (!own).then(|| Event { event: WebhookEvent::Failed, record, request, what: format!("failed: {}", code(reason)) })
}

/// The events one applied record is about: none, one, or for a denial that
/// failed its request, `denied` and then `failed`.
fn events_of<'a>(state: &'a ClusterState, record: &'a AuditRecord) -> Vec<Event<'a>> {
    let Some(first) = event_of(state, record) else { return Vec::new() };
    // `deny` says "…; it failed" when this denial was the one that failed the request.
    if first.event != WebhookEvent::Denied || !record.detail.ends_with("it failed") {
        return vec![first];
    }
    let reason = match &first.request.status {
        RequestStatus::Failed { reason } => reason.clone(),
        _ => "denied".to_string(),
    };
    let what = format!("failed: {}", code(&reason));
    let failed = Event { event: WebhookEvent::Failed, record, request: first.request, what };
    vec![first, failed]
}

/// The first event one applied record is about, if any.
fn event_of<'a>(state: &'a ClusterState, record: &'a AuditRecord) -> Option<Event<'a>> {
    if record.result != "applied" {
        return None;
    }
    let request = state.requests.get(record.request_id.as_deref()?)?;
    let actor = record.actor.as_deref().map_or_else(|| "someone".into(), code);
    let (event, what) = match record.kind.as_str() {
        "sign_request" => {
            let (awaiting, _) = standing(state, request, &record.approvals);
            if awaiting.is_empty() {
                return None;
            }
            let names: Vec<String> = awaiting.iter().map(|n| code(n)).collect();
            (WebhookEvent::AwaitingApproval, format!("awaits approval from {}", names.join(", ")))
        }
        "approve" => (WebhookEvent::Approved, format!("was approved by {actor}")),
        "deny" => {
            let reason = request.denials.iter().rev().find(|d| Some(&d.approver) == record.actor.as_ref());
            let reason = reason.map(|d| format!(": {}", code(&d.reason))).unwrap_or_default();
            (WebhookEvent::Denied, format!("was denied by {actor}{reason}"))
        }
        "sign_result" => (WebhookEvent::Signed, "was signed".to_string()),
        "sign_failed" => (WebhookEvent::Failed, format!("failed: {}", code(&record.detail))),
        "cancel_request" => (WebhookEvent::Failed, "was cancelled by its requester".to_string()),
        _ => return None,
    };
    Some(Event { event, record, request, what })
}

/// Who the request still waits for, and its progress, given the approvals it held
/// (`approvals`, as the record lists them) under its key's current policy.
fn standing(state: &ClusterState, request: &RequestRecord, approvals: &[String]) -> (Vec<String>, String) {
    let Some(key) = state.keys.get(&request.key_id) else { return (Vec::new(), String::new()) };
    // A global signature (minisign) is authorised by its parent's approvals, not its own.
    if state.global_signature_authorised(request).is_some() {
        return (Vec::new(), String::new());
    }
    let have: BTreeSet<&str> = approvals.iter().map(String::as_str).collect();
    let mut awaiting = BTreeSet::new();
    let mut progress = Vec::new();
    for (group, need) in key.policy.requirements(&request.attributes) {
        let count = group.iter().filter(|n| have.contains(n.as_str())).count() as u32;
        if count < need {
            awaiting.extend(group.iter().filter(|n| !have.contains(n.as_str())).cloned());
        }
        progress.push(format!("{count}/{need} from [{}]", group.join(", ")));
    }
    (awaiting.into_iter().collect(), progress.join("; "))
}

/// Everyone a request concerns: its requester, the approvers its policy names
/// for it, and whoever approved or denied it.
fn concerned(state: &ClusterState, request: &RequestRecord, requester: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = [requester.to_string()].into();
    if let Some(key) = state.keys.get(&request.key_id) {
        for (group, _) in key.policy.requirements(&request.attributes) {
            names.extend(group);
        }
    }
    names.extend(request.approvals.iter().map(|a| a.approver.clone()));
    names.extend(request.denials.iter().map(|d| d.approver.clone()));
    names
}

/// The notification `webhook` gets for `event`, if it wants it: its events,
/// keys and operators each narrow what it gets (an empty list narrows nothing).
/// An operator narrows `awaiting_approval` to the requests that wait for them,
/// and every other event to the requests that concern them.
fn notification(state: &ClusterState, cluster_id: &str, webhook: &Webhook, event: &Event<'_>) -> Option<Notification> {
    if !webhook.wants(event.event) {
        return None;
    }
    let request = event.request;
    let key = state.keys.get(&request.key_id).map(|k| k.name.clone()).unwrap_or_else(|| request.key_id.clone());
    if !webhook.keys.is_empty() && !webhook.keys.contains(&key) {
        return None;
    }
    let requester = state
        .operator_by_key(&request.requester)
        .map(|op| op.name.clone())
        .unwrap_or_else(|| request.requester.to_hex());
    let (awaiting, progress) = standing(state, request, &event.record.approvals);
    if !webhook.operators.is_empty() {
        let matched = match event.event {
            WebhookEvent::AwaitingApproval => awaiting.iter().any(|n| webhook.operators.contains(n)),
            _ => concerned(state, request, &requester).iter().any(|n| webhook.operators.contains(n)),
        };
        if !matched {
            return None;
        }
    }
    let id = idempotency_id(cluster_id, &webhook.name, event.record, event.event, &request.request_id);
    let progress_shown = matches!(event.event, WebhookEvent::Approved | WebhookEvent::AwaitingApproval);
    let sentence = Sentence {
        cluster: state.cluster_name.as_deref().unwrap_or(cluster_id),
        request_id: &request.request_id,
        key: &key,
        purpose: &request.purpose,
        requester: &requester,
        what: &event.what,
        progress: if progress_shown { &progress } else { "" },
    };
    let text = sentence.text();
    let payload = Payload {
        id: id.clone(),
        event: event.event,
        cluster_id: cluster_id.to_string(),
        request_id: request.request_id.clone(),
        key,
        key_version: event.record.key_version,
        purpose: request.purpose.clone(),
        environment: request.environment.clone(),
        attributes: request.attributes.clone(),
        requester,
        awaiting,
        progress,
        audit_seq: event.record.seq,
        at_ms: event.record.time_ms,
        text,
    };
    let body = serde_json::to_vec(&payload).expect("a payload serialises");
    Some(Notification { webhook: webhook.name.clone(), url: webhook.url.clone(), id, event: event.event, body })
}

/// What the `text` of a notification says, each part as it is in the state.
struct Sentence<'a> {
    cluster: &'a str,
    request_id: &'a str,
    key: &'a str,
    purpose: &'a str,
    requester: &'a str,
    /// What happened, already made safe for a chat (its user-chosen parts in [`code`]).
    what: &'a str,
    /// How the request stands against its policy, or empty.
    progress: &'a str,
}

impl Sentence<'_> {
    /// One sentence a chat shows as it is: requesters choose the purpose and request
    /// id and approvers the reasons, so each user-chosen part is in inline code and
    /// nothing in it can mention `@channel`, link or format (the JSON fields keep the
    /// values as they are).
    fn text(&self) -> String {
        let mut text = format!(
            "Synod {}: request {} for key {} ({}) by {} {}",
            code(self.cluster),
            code(self.request_id),
            code(self.key),
            code(self.purpose),
            code(self.requester),
            self.what
        );
        if !self.progress.is_empty() {
            text.push_str(&format!(" ({})", escaped(self.progress)));
        }
        text.push('.');
        text
    }
}

/// `&`, `<` and `>` escaped as Slack's and Mattermost's message formatting wants:
/// `<!channel>` or `<https://…|label>` then shows as typed instead of acting.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A user-chosen value as inline code: without backticks and control characters
/// (either would end the code span or the line), then escaped.
fn code(text: &str) -> String {
    let kept: String = text.chars().filter(|c| *c != '`' && !c.is_control()).collect();
    format!("`{}`", escaped(&kept))
}

/// The idempotency id: hex SHA-256 over a domain tag and, each length-prefixed,
/// the cluster id, the webhook's name, the record's sequence number and hash,
/// the event and the request id (one record may carry several expiries). Every
/// node derives the same id for the same notification, so a new leader that
/// sends one again sends it under the same id.
pub fn idempotency_id(
    cluster_id: &str,
    webhook: &str,
    record: &AuditRecord,
    event: WebhookEvent,
    request_id: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(ID_DOMAIN);
    let seq = record.seq.to_be_bytes();
    for part in [
        cluster_id.as_bytes(),
        webhook.as_bytes(),
        &seq,
        record.hash.as_bytes(),
        event.name().as_bytes(),
        request_id.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_text_puts_requester_words_in_escaped_inline_code() {
        // A purpose that tries to mention the channel, link elsewhere, or close the code
        // span and start a line of its own shows as typed, inside code.
        let evil = "<!channel> <https://evil|x>";
        let reason = code("bad `build`\n<!here> & more");
        let what = format!("was denied by {}: {reason}", code("alice"));
        let sentence = Sentence {
            cluster: "prod",
            request_id: "pay-<1>",
            key: "treasury",
            purpose: evil,
            requester: "dave",
            what: &what,
            progress: "0/1 from [alice]",
        };
        let text = sentence.text();
        assert_eq!(
            text,
            "Synod `prod`: request `pay-&lt;1&gt;` for key `treasury` (`&lt;!channel&gt; &lt;https://evil|x&gt;`) by \
             `dave` was denied by `alice`: `bad build&lt;!here&gt; &amp; more` (0/1 from [alice])."
        );
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('\n'), "{text}");
    }
    /// A cluster whose key `k` has a pending request `r1` and a webhook that wants everything.
    fn world_with_a_pending_request() -> crate::state::key_tests::World {
        use crate::state::key_tests::{dkg, request_by, with_policy, World};
        let mut world = World::new();
        dkg(&mut world, "k");
        let keys = with_policy(&mut world, 1);
        assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
        let webhook = Webhook {
            name: "chat".into(),
            url: "https://hooks.example.com/x".into(),
            operators: vec![],
            keys: vec![],
            events: vec![],
        };
        assert!(world.by_admin(synod_proto::Command::SetWebhook { webhook }).is_applied());
        world.state.take_audit();
        world
    }

    fn failed_ids(notes: &[Notification]) -> Vec<String> {
        notes.iter().filter(|n| n.event == WebhookEvent::Failed).map(|n| n.id.clone()).collect()
    }

    #[test]
    fn webhooks_a_failure_in_the_millisecond_of_the_last_record_read_is_sent_once_under_one_id() {
        // Entry A (an unrelated command) and entry B (disabling the key, which fails r1 with
        // no record of r1's own) share a millisecond. A node that reads A's record before B
        // is applied still sends r1's `failed`, tied to A, the first record of that time;
        // one that reads both at once sends it under the same id; neither sends it twice.
        let mut world = world_with_a_pending_request();
        let before = world.state.audit_head.seq;
        let add = synod_proto::Command::AddOperator {
            name: "erin".into(),
            key: Some(synod_proto::OperatorKey::of(&ed25519_dalek::SigningKey::from_bytes(&[9; 32]))),
            ssh_key: None,
            roles: vec![synod_proto::authz::Role::Auditor],
            pending_max: None,
        };
        assert!(world.by_admin(add).is_applied());
        let a = world.state.take_audit();
        let state_after_a = world.state.clone();
        world.time_ms -= 1; // B is applied in A's millisecond.
        assert!(world.by_admin(synod_proto::Command::DisableKey { key: "k".into() }).is_applied());
        let b = world.state.take_audit();
        assert_eq!(a[0].time_ms, b[0].time_ms);
        assert!(matches!(world.state.requests["r1"].status, RequestStatus::Failed { .. }));
        let prev_ms = a[0].time_ms - 1;
        assert!(a[0].seq > before);

        // Read in two batches, A's while B is not applied yet.
        let mut watch = Watch::default();
        let first = notifications(&state_after_a, &a, prev_ms, &mut watch);
        assert!(failed_ids(&first).is_empty(), "r1 has not failed yet");
        let second = notifications(&world.state, &b, a.last().unwrap().time_ms, &mut watch);
        let split = failed_ids(&second);
        assert_eq!(split.len(), 1, "{second:?}");

        // Read at once, with the newest state.
        let both: Vec<AuditRecord> = a.iter().chain(&b).cloned().collect();
        let at_once = failed_ids(&notifications(&world.state, &both, prev_ms, &mut Watch::default()));
        assert_eq!(at_once, split, "one id whatever the batches");

        // A's batch read with the newest state, then B's: still once.
        let mut watch = Watch::default();
        let mut ids = failed_ids(&notifications(&world.state, &a, prev_ms, &mut watch));
        ids.extend(failed_ids(&notifications(&world.state, &b, a.last().unwrap().time_ms, &mut watch)));
        assert_eq!(ids, split);
    }

    #[test]
    fn webhooks_a_batch_looks_at_pending_and_watched_requests_not_every_request() {
        // After the first batch, a request that neither is pending nor failed after the
        // last record read is no longer looked at.
        let mut world = world_with_a_pending_request();
        assert!(world.by_admin(synod_proto::Command::DisableKey { key: "k".into() }).is_applied());
        let records = world.state.take_audit();
        let mut watch = Watch::default();
        notifications(&world.state, &records, records[0].time_ms - 1, &mut watch);
        assert!(watch.primed);
        assert!(watch.ids.is_empty(), "{:?}", watch.ids);
    }
}
