//! From applied audit records to webhook notifications: a pure function of the
//! records, the applied state and the webhooks, with no I/O.
//!
//! The records' kinds give the events: `sign_request` gives awaiting_approval
//! when the request's policy still needs approvals; `approve`, approved;
//! `deny`, denied (and failed too when that denial failed the request);
//! `sign_result`, signed; `sign_failed` and `cancel_request`, failed. Expiry, and
//! a failure because the key stopped signing or its policy changed, have no
//! record of the request's own: the state fails such requests while it applies
//! an entry (expired ones just before it), at that entry's time, so their
//! `expired` or `failed` event belongs to the first record of that time.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};
use synod_proto::webhook::{Webhook, WebhookEvent};

use crate::state::{AuditRecord, ClusterState, RequestRecord, RequestStatus};

/// Domain tag of idempotency ids.
const ID_DOMAIN: &[u8] = b"synod/webhook/v1\0";

/// The prefix of an expired request's failure reason (`state::signing`).
const EXPIRED_REASON: &str = "expired before it was signed";

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

/// The notifications `records` give, in record order. `prev_time_ms` is the
/// time of the record before the first one (0 when there is none): an expiry
/// belongs to the first record of its time.
pub fn notifications(state: &ClusterState, records: &[AuditRecord], mut prev_time_ms: u64) -> Vec<Notification> {
    let Some(cluster_id) = state.cluster_id.as_deref() else { return Vec::new() };
    if state.webhooks.is_empty() {
        return Vec::new();
    }
    let failed = failed_by_time(state, records.first().map_or(0, |r| r.time_ms));
    let mut out = Vec::new();
    for record in records {
        let mut events = Vec::new();
        if record.time_ms > prev_time_ms {
            for (request, reason) in failed.get(&record.time_ms).into_iter().flatten() {
                events.extend(failed_without_record(records, record, request, reason));
            }
        }
        prev_time_ms = prev_time_ms.max(record.time_ms);
        events.extend(events_of(state, record));
        for event in events {
            if event.request.key_id == audit_key_id(state) {
                continue;
            }
            for webhook in state.webhooks.values() {
                if let Some(n) = notification(state, cluster_id, webhook, &event) {
                    out.push(n);
                }
            }
        }
    }
    out
}

/// The audit key's id: its checkpoint requests are the nodes' own and notify nobody.
fn audit_key_id(state: &ClusterState) -> String {
    state.key_by_name(synod_proto::authz::AUDIT_KEY_NAME).map(|k| k.id.clone()).unwrap_or_default()
}

/// Requests that failed at or after `from_ms`, with why, by the time they were failed.
fn failed_by_time(state: &ClusterState, from_ms: u64) -> BTreeMap<u64, Vec<(&RequestRecord, &str)>> {
    let mut out: BTreeMap<u64, Vec<(&RequestRecord, &str)>> = BTreeMap::new();
    for request in state.requests.values() {
        let RequestStatus::Failed { reason } = &request.status else { continue };
        if let Some(at) = request.finished_at_ms.filter(|at| *at >= from_ms) {
            out.entry(at).or_default().push((request, reason.as_str()));
        }
    }
    out
}

/// The event of a request that failed at `record`'s time without a record of
/// its own: `expired`, or `failed` when its key stopped signing or its policy
/// changed. A request failed by its own `sign_failed`, `cancel_request` or
/// `deny` record gets its event from that record.
fn failed_without_record<'a>(
    records: &[AuditRecord],
    record: &'a AuditRecord,
    request: &'a RequestRecord,
    reason: &str,
) -> Option<Event<'a>> {
    if reason.starts_with(EXPIRED_REASON) {
        let what = "expired before it was approved and signed".to_string();
        return Some(Event { event: WebhookEvent::Expired, record, request, what });
    }
    let own = records.iter().any(|r| {
        r.time_ms == record.time_ms
            && r.request_id.as_deref() == Some(request.request_id.as_str())
            && matches!(r.kind.as_str(), "sign_failed" | "cancel_request" | "deny")
    });
    (!own).then(|| Event { event: WebhookEvent::Failed, record, request, what: format!("failed: {reason}") })
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
    let failed =
        Event { event: WebhookEvent::Failed, record, request: first.request, what: format!("failed: {reason}") };
    vec![first, failed]
}

/// The first event one applied record is about, if any.
fn event_of<'a>(state: &'a ClusterState, record: &'a AuditRecord) -> Option<Event<'a>> {
    if record.result != "applied" {
        return None;
    }
    let request = state.requests.get(record.request_id.as_deref()?)?;
    let actor = record.actor.clone().unwrap_or_else(|| "someone".into());
    let (event, what) = match record.kind.as_str() {
        "sign_request" => {
            let (awaiting, _) = standing(state, request, &record.approvals);
            if awaiting.is_empty() {
                return None;
            }
            (WebhookEvent::AwaitingApproval, format!("awaits approval from {}", awaiting.join(", ")))
        }
        "approve" => (WebhookEvent::Approved, format!("was approved by {actor}")),
        "deny" => {
            let reason = request.denials.iter().rev().find(|d| Some(&d.approver) == record.actor.as_ref());
            let reason = reason.map(|d| format!(": {}", d.reason)).unwrap_or_default();
            (WebhookEvent::Denied, format!("was denied by {actor}{reason}"))
        }
        "sign_result" => (WebhookEvent::Signed, "was signed".to_string()),
        "sign_failed" => (WebhookEvent::Failed, format!("failed: {}", record.detail)),
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
    let mut text = format!(
        "Synod {}: request {} for key {key} ({}) by {requester} {}",
        state.cluster_name.as_deref().unwrap_or(cluster_id),
        request.request_id,
        request.purpose,
        event.what
    );
    if !progress.is_empty() && matches!(event.event, WebhookEvent::Approved | WebhookEvent::AwaitingApproval) {
        text.push_str(&format!(" ({progress})"));
    }
    text.push('.');
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
