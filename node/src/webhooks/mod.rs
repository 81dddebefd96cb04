//! Webhook notifications: the leader tells the cluster's webhooks that a request
//! awaits approval, was approved, denied, signed, failed or expired.
//!
//! **Who sends.** The leader, alone. Every node reads the applied audit records
//! from its cursor (`events.rs` turns them into notifications, without I/O, from
//! the records, the applied state and the webhooks) and moves its cursor, kept
//! in the store's `Meta` tree; only the leader queues what they give. A node that
//! becomes leader goes back [`REPLAY_WINDOW_MS`] of log time before its cursor
//! (at most [`REPLAY_RECORDS_MAX`] records), so a notification the old leader
//! queued but did not deliver is sent, and one it did deliver may be sent again;
//! every node derives the same idempotency id for it (`Idempotency-Key`, and `id`
//! in the body), so a receiver that keeps ids drops the duplicate. Deliveries
//! queued on a node that stops are not kept.
//!
//! **How.** A POST of the JSON payload, signed with RFC 9421 by the sending
//! node's certificate key (`sign.rs`), with a [`ATTEMPT_TIMEOUT`] timeout,
//! retried with exponential backoff and jitter (from the node's RNG seam) from
//! [`BACKOFF_MIN`] to [`BACKOFF_MAX`], for [`GIVE_UP_AFTER_MS`] at most. The queue
//! holds [`QUEUE_MAX`] deliveries; past that the oldest is dropped and counted.
//! Everything runs in its own tasks, fed by a poll of the audit cursor: applying
//! and signing never wait for a receiver.
//!
//! **Recorded.** Per webhook, in the store (`webhook/status/<name>`) and in
//! metrics (`synod_webhook_deliveries_total{webhook,result}`,
//! `synod_webhook_queued{webhook}`); `GET /v1/sys/webhooks` shows this node's.

mod events;
mod sign;

pub use events::{idempotency_id, notifications, Notification, Payload, Watch};
pub use sign::{CERTIFICATE_HEADER, COVERED, LABEL};

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use synod_proto::webhook::WebhookEvent;

use crate::metrics::Metrics;
use crate::pki::NodeIdentity;
use crate::raft::state_machine::SharedState;
use crate::seams::Seams;
use crate::store::{Durability, Op, Store, Tree};

/// Deliveries waiting (for their first attempt or a retry) at most; past it the oldest is dropped.
pub const QUEUE_MAX: usize = 4096;
/// Deliveries sent at once.
pub const IN_FLIGHT_MAX: usize = 16;
/// Deliveries sent at once to one webhook: a receiver that accepts connections and
/// never answers holds this many attempts for their timeout, not all of them.
pub const IN_FLIGHT_PER_WEBHOOK_MAX: usize = 2;
const _: () = assert!(IN_FLIGHT_PER_WEBHOOK_MAX <= IN_FLIGHT_MAX);
/// How long one attempt may take, connection to answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry's delay; each next one doubles, up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// A notification not delivered within this long of its first attempt is given up.
pub const GIVE_UP_AFTER_MS: u64 = 24 * 60 * 60 * 1000;
/// How far back a new leader goes through the audit records, in records at most.
pub const REPLAY_RECORDS_MAX: u64 = 1024;
/// How far back a new leader goes, in log time before its cursor: the records whose
/// notifications the old leader may not have delivered yet.
pub const REPLAY_WINDOW_MS: u64 = 60_000;
/// Audit records read at once.
const RECORDS_PER_READ: usize = 256;
/// How often the sender looks at the audit head when nothing wakes it.
const POLL: Duration = Duration::from_secs(1);
/// The longest error text kept per webhook.
const ERROR_BYTES_MAX: usize = 512;

/// The cursor: the last audit record this node turned into notifications.
const CURSOR_KEY: &[u8] = b"webhook/cursor";
/// Per-webhook delivery status, `webhook/status/<name>`.
const STATUS_PREFIX: &str = "webhook/status/";

/// What a node records of one webhook's deliveries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryStatus {
    /// Notifications delivered (a 2xx answer).
    pub delivered: u64,
    /// Attempts that failed (each retried until it is given up).
    pub failed_attempts: u64,
    /// Notifications given up after retrying for 24 h.
    pub given_up: u64,
    /// Notifications dropped because the queue was full.
    pub dropped: u64,
    /// When the last delivery succeeded (this node's clock, ms), and its notification's id.
    pub last_success_ms: Option<u64>,
    pub last_success_id: Option<String>,
    /// When the last attempt failed, and why.
    pub last_failure_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// One webhook as `GET /v1/sys/webhooks` shows it: its settings (the URL cut to
/// its origin, since a chat's webhook URL is a secret) and this node's deliveries.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub name: String,
    /// The URL's scheme, host and port, then `/…`.
    pub url: String,
    /// SHA-256 (hex) of the whole URL, to compare with the one an admin set.
    pub url_sha256: String,
    pub operators: Vec<String>,
    pub keys: Vec<String>,
    pub events: Vec<WebhookEvent>,
    /// Whether the cluster still has this webhook (a removed one keeps its record here).
    pub configured: bool,
    /// Notifications waiting on this node.
    pub queued: usize,
    /// This node's deliveries to it.
    pub delivery: DeliveryStatus,
}

/// `GET /v1/sys/webhooks`: the webhooks and this node's deliveries.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub node_id: u64,
    /// Whether this node sends (it is the leader).
    pub sending: bool,
    /// The last audit record this node turned into notifications.
    pub cursor: u64,
    pub webhooks: Vec<WebhookView>,
}

/// One notification on its way.
struct Delivery {
    notification: Notification,
    /// When it was queued (this node's clock, ms): it is given up 24 h later.
    queued_ms: u64,
    /// Attempts made so far.
    attempts: u32,
    /// When to try next.
    due: tokio::time::Instant,
}

/// The queue and what this node recorded.
#[derive(Default)]
struct Book {
    queue: VecDeque<Delivery>,
    statuses: BTreeMap<String, DeliveryStatus>,
    /// Attempts in flight per webhook, at most [`IN_FLIGHT_PER_WEBHOOK_MAX`] each.
    in_flight: BTreeMap<String, usize>,
    cursor: u64,
    sending: bool,
}

/// A node's webhook sender: its queue, its records, its HTTP client.
pub struct Webhooks {
    node_id: u64,
    store: Arc<dyn Store>,
    identity: Arc<NodeIdentity>,
    /// The RFC 7638 thumbprint of the node's public key: the signatures' `keyid`
    /// (or why the certificate gave none: then every attempt fails saying so).
    keyid: Result<String, String>,
    metrics: Arc<Metrics>,
    seams: Seams,
    book: Mutex<Book>,
    /// Wakes the delivery task when a notification is queued.
    wake: Arc<tokio::sync::Notify>,
    /// The HTTP client, or why none could be built (then every attempt fails with it).
    client: Result<reqwest::Client, String>,
}

impl Webhooks {
    /// The sender of node `identity.id`; reads its cursor and records from `store`.
    pub fn new(store: Arc<dyn Store>, identity: Arc<NodeIdentity>, metrics: Arc<Metrics>, seams: Seams) -> Webhooks {
        let mut book = Book::default();
        if let Ok(Some(bytes)) = store.get(Tree::Meta, CURSOR_KEY) {
            book.cursor = bytes.try_into().map(u64::from_be_bytes).unwrap_or(0);
        }
        let end = format!("{}\u{10ffff}", STATUS_PREFIX);
        if let Ok(rows) = store.scan(Tree::Meta, STATUS_PREFIX.as_bytes(), Some(end.as_bytes()), 1024) {
            for (key, value) in rows {
                let name = String::from_utf8_lossy(&key[STATUS_PREFIX.len()..]).into_owned();
                if let Ok(status) = serde_json::from_slice(&value) {
                    book.statuses.insert(name, status);
                }
            }
        }
        Webhooks {
            node_id: identity.id,
            store,
            keyid: identity_public_key(&identity).map(|key| synod_proto::keyfmt::jwk_thumbprint(&key)),
            identity,
            metrics,
            seams,
            book: Mutex::new(book),
            wake: Arc::default(),
            client: http_client(),
        }
    }

    /// `GET /v1/sys/webhooks`: the cluster's webhooks (from `configured`) and this node's deliveries.
    pub fn list(&self, configured: &BTreeMap<String, synod_proto::webhook::Webhook>) -> WebhookList {
        let book = self.book.lock().expect("webhook lock");
        let mut names: Vec<&String> = configured.keys().chain(book.statuses.keys()).collect();
        names.sort();
        names.dedup();
        let webhooks = names
            .into_iter()
            .map(|name| {
                let hook = configured.get(name);
                let url = hook.map(|h| h.url.as_str()).unwrap_or_default();
                WebhookView {
                    name: name.clone(),
                    url: if url.is_empty() { String::new() } else { url_shown(url) },
                    url_sha256: if url.is_empty() { String::new() } else { sha256_hex(url.as_bytes()) },
                    operators: hook.map(|h| h.operators.clone()).unwrap_or_default(),
                    keys: hook.map(|h| h.keys.clone()).unwrap_or_default(),
                    events: hook.map(|h| h.events.clone()).unwrap_or_default(),
                    configured: hook.is_some(),
                    queued: book.queue.iter().filter(|d| d.notification.webhook == *name).count(),
                    delivery: book.statuses.get(name).cloned().unwrap_or_default(),
                }
            })
            .collect();
        WebhookList { node_id: self.node_id, sending: book.sending, cursor: book.cursor, webhooks }
    }

    /// Queues `notifications`, dropping the oldest deliveries past [`QUEUE_MAX`].
    fn enqueue(&self, notifications: Vec<Notification>) {
        if notifications.is_empty() {
            return;
        }
        let now_ms = self.seams.clock.now_ms();
        let now = tokio::time::Instant::now();
        let mut book = self.book.lock().expect("webhook lock");
        for notification in notifications {
            let delivery = Delivery { notification, queued_ms: now_ms, attempts: 0, due: now };
            self.push(&mut book, delivery);
        }
        drop(book);
        self.wake.notify_one();
    }

    /// Adds one delivery to the queue, dropping the oldest when it is full.
    fn push(&self, book: &mut Book, delivery: Delivery) {
        if book.queue.len() >= QUEUE_MAX {
            let oldest = book.queue.iter().enumerate().min_by_key(|(_, d)| d.queued_ms).map(|(i, _)| i);
            if let Some(dropped) = oldest.and_then(|i| book.queue.remove(i)) {
                let name = dropped.notification.webhook;
                tracing::warn!(webhook = %name, id = %dropped.notification.id, "webhook queue full; dropped the oldest notification");
                book.statuses.entry(name.clone()).or_default().dropped += 1;
                self.metrics
                    .counter("synod_webhook_deliveries_total", &[("webhook", &name), ("result", "dropped")])
                    .increment(1);
                self.save_status(book, &name);
            }
        }
        book.queue.push_back(delivery);
        self.set_queued_gauges(book);
    }

    fn set_queued_gauges(&self, book: &Book) {
        let mut counts: BTreeMap<&str, usize> = book.statuses.keys().map(|n| (n.as_str(), 0)).collect();
        for d in &book.queue {
            *counts.entry(d.notification.webhook.as_str()).or_default() += 1;
        }
        for (name, count) in counts {
            self.metrics.gauge("synod_webhook_queued", &[("webhook", name)]).set(count as f64);
        }
    }

    /// Writes one webhook's status to the store (buffered: a lost status costs only a figure).
    fn save_status(&self, book: &Book, name: &str) {
        let Some(status) = book.statuses.get(name) else { return };
        let key = format!("{STATUS_PREFIX}{name}").into_bytes();
        let value = serde_json::to_vec(status).expect("a status serialises");
        if let Err(e) = self.store.write(vec![Op::Put { tree: Tree::Meta, key, value }], Durability::Buffered) {
            tracing::warn!(webhook = %name, error = %e, "could not record a webhook's delivery status");
        }
    }

    /// Takes the deliveries due now, at most `room`, and at most
    /// [`IN_FLIGHT_PER_WEBHOOK_MAX`] in flight per webhook (each counted until it is settled).
    fn take_due(&self, room: usize) -> (Vec<Delivery>, Option<tokio::time::Instant>) {
        let now = tokio::time::Instant::now();
        let mut book = self.book.lock().expect("webhook lock");
        let mut due = Vec::new();
        let mut i = 0;
        while i < book.queue.len() && due.len() < room {
            let name = &book.queue[i].notification.webhook;
            let busy = book.in_flight.get(name).copied().unwrap_or(0) >= IN_FLIGHT_PER_WEBHOOK_MAX;
            if book.queue[i].due <= now && !busy {
                let delivery = book.queue.remove(i).expect("an index within the queue");
                *book.in_flight.entry(delivery.notification.webhook.clone()).or_default() += 1;
                due.push(delivery);
            } else {
                i += 1;
            }
        }
        let next = book.queue.iter().map(|d| d.due).min();
        if !due.is_empty() {
            self.set_queued_gauges(&book);
        }
        (due, next)
    }

    /// Records an attempt's result; a failed one is queued again after its backoff, or given up.
    fn settle(&self, mut delivery: Delivery, result: Result<(), String>) {
        let now_ms = self.seams.clock.now_ms();
        let name = delivery.notification.webhook.clone();
        let mut book = self.book.lock().expect("webhook lock");
        if let Some(count) = book.in_flight.get_mut(&name) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                book.in_flight.remove(&name);
            }
        }
        let status = book.statuses.entry(name.clone()).or_default();
        let counter = |result: &'static str| {
            self.metrics
                .counter("synod_webhook_deliveries_total", &[("webhook", &name), ("result", result)])
                .increment(1)
        };
        match result {
            Ok(()) => {
                status.delivered += 1;
                status.last_success_ms = Some(now_ms);
                status.last_success_id = Some(delivery.notification.id.clone());
                counter("delivered");
                tracing::debug!(webhook = %name, id = %delivery.notification.id, event = delivery.notification.event.name(), "webhook notification delivered");
            }
            Err(error) => {
                status.failed_attempts += 1;
                status.last_failure_ms = Some(now_ms);
                status.last_error = Some(error.chars().take(ERROR_BYTES_MAX).collect());
                counter("failed");
                if now_ms.saturating_sub(delivery.queued_ms) >= GIVE_UP_AFTER_MS {
                    status.given_up += 1;
                    counter("given_up");
                    tracing::warn!(webhook = %name, id = %delivery.notification.id, %error, "gave up a webhook notification after retrying for 24 h");
                } else {
                    let delay = self.backoff(delivery.attempts);
                    tracing::info!(webhook = %name, id = %delivery.notification.id, %error, retry_in_ms = delay.as_millis() as u64, "webhook delivery failed; will retry");
                    delivery.due = tokio::time::Instant::now() + delay;
                    self.save_status(&book, &name);
                    self.push(&mut book, delivery);
                    return;
                }
            }
        }
        self.save_status(&book, &name);
        self.set_queued_gauges(&book);
    }

    /// The delay before the retry after `attempts` attempts: doubling from
    /// [`BACKOFF_MIN`] to [`BACKOFF_MAX`], then a random half to whole of it
    /// (from the RNG seam) so receivers coming back are not hit all at once.
    fn backoff(&self, attempts: u32) -> Duration {
        let doubled = BACKOFF_MIN.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
        let full = doubled.min(BACKOFF_MAX).as_millis() as u64;
        let jitter = {
            let mut rng = self.seams.rng.lock().expect("rng lock");
            rand_core::RngCore::next_u64(&mut *rng) % (full / 2 + 1)
        };
        Duration::from_millis(full - jitter)
    }

    /// One attempt: the signed POST, with its timeout.
    async fn attempt(self: &Arc<Self>, notification: &Notification) -> Result<(), String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let keyid = self.keyid.as_ref().map_err(Clone::clone)?;
        let mut url =
            reqwest::Url::parse(&notification.url).map_err(|e| format!("the webhook URL does not parse: {e}"))?;
        url.set_fragment(None);
        let created_s = self.seams.clock.now_ms() / 1000;
        let headers =
            sign::headers(&self.identity, keyid, url.as_str(), &notification.id, &notification.body, created_s)?;
        let mut request = client.post(url).body(notification.body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let answer = request.send().await.map_err(|e| describe(e.without_url()))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        Err(format!("the receiver answered {status}"))
    }

    /// The cursor a node starts from: its own, at most [`REPLAY_RECORDS_MAX`]
    /// records behind `head` (a node far behind skips what it could no longer send).
    fn start_cursor(&self, head: u64) -> u64 {
        let mut book = self.book.lock().expect("webhook lock");
        book.cursor = book.cursor.min(head).max(head.saturating_sub(REPLAY_RECORDS_MAX));
        book.cursor
    }

    fn save_cursor(&self, cursor: u64) {
        self.book.lock().expect("webhook lock").cursor = cursor;
        let op = Op::Put { tree: Tree::Meta, key: CURSOR_KEY.to_vec(), value: cursor.to_be_bytes().to_vec() };
        if let Err(e) = self.store.write(vec![op], Durability::Buffered) {
            tracing::warn!(error = %e, "could not record the webhook cursor");
        }
    }

    fn set_sending(&self, sending: bool) {
        self.book.lock().expect("webhook lock").sending = sending;
    }
}

/// Runs the sender: on every node the audit records are turned into
/// notifications and the cursor moves as they are applied; on the leader
/// (`is_leader` says whether this node leads) they are queued, and its queued
/// deliveries are sent. Ends when the sender is dropped.
pub async fn run(webhooks: Weak<Webhooks>, shared: SharedState, is_leader: impl Fn() -> bool + Send + 'static) {
    tokio::spawn(deliver(webhooks.clone()));
    let mut applied = shared.subscribe();
    let mut at: Option<(u64, u64)> = None; // (cursor, its record's time)
    let mut sending = false;
    let mut watch = Watch::default();
    loop {
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    // The state machine is gone (the node is stopping): poll rather than spin.
                    tokio::time::sleep(POLL).await;
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        let Some(hooks) = webhooks.upgrade() else { return };
        let head = shared.audit_written();
        let (mut cursor, mut prev_time_ms) = match at {
            Some(at) => at,
            None => {
                let cursor = hooks.start_cursor(head);
                (cursor, record_time(&hooks, cursor).await)
            }
        };
        let leader = is_leader();
        if leader && !sending {
            (cursor, prev_time_ms) = replay_start(&hooks, cursor, prev_time_ms).await;
            // The requests to watch are found again from the whole state, once per leadership.
            watch = Watch::default();
            tracing::info!(cursor, head, "leading: sending webhook notifications from the audit cursor");
        }
        if leader != sending {
            sending = leader;
            hooks.set_sending(sending);
        }
        while cursor < head {
            let records = read_records(&hooks, cursor + 1, RECORDS_PER_READ).await;
            let Some(last) = records.last() else { break };
            let (last_seq, last_time) = (last.seq, last.time_ms);
            let notes = notifications(&shared.read().state, &records, prev_time_ms, &mut watch);
            if sending {
                hooks.enqueue(notes);
            }
            cursor = last_seq;
            prev_time_ms = last_time;
            hooks.save_cursor(cursor);
        }
        at = Some((cursor, prev_time_ms));
    }
}

/// The time of record `seq` (0 when there is none).
async fn record_time(hooks: &Webhooks, seq: u64) -> u64 {
    if seq == 0 {
        return 0;
    }
    read_records(hooks, seq, 1).await.first().filter(|r| r.seq == seq).map_or(0, |r| r.time_ms)
}

/// Where a new leader starts: the first record within [`REPLAY_WINDOW_MS`] of log
/// time before its cursor (whose time is `cursor_time_ms`), at most
/// [`REPLAY_RECORDS_MAX`] records back, with the time of the record before it.
/// Their notifications are sent again under the ids the old leader used.
async fn replay_start(hooks: &Webhooks, cursor: u64, cursor_time_ms: u64) -> (u64, u64) {
    let from_ms = cursor_time_ms.saturating_sub(REPLAY_WINDOW_MS);
    let mut seq = cursor.saturating_sub(REPLAY_RECORDS_MAX) + 1;
    while seq <= cursor {
        let records = read_records(hooks, seq, RECORDS_PER_READ).await;
        let Some(last) = records.last() else { break };
        if let Some(first) = records.iter().find(|r| r.time_ms >= from_ms && r.seq <= cursor) {
            let start = first.seq - 1;
            return (start, record_time(hooks, start).await);
        }
        seq = last.seq + 1;
    }
    (cursor, cursor_time_ms)
}

/// Audit records from `from` (an empty list when the store cannot be read: the next poll retries).
async fn read_records(hooks: &Webhooks, from: u64, limit: usize) -> Vec<crate::state::AuditRecord> {
    let store = hooks.store.clone();
    let read = crate::seams::run_blocking(move || crate::raft::state_machine::read_audit(&*store, from, limit)).await;
    match read {
        Ok(Ok(records)) => records,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read audit records for webhooks; will retry");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read audit records for webhooks; will retry");
            Vec::new()
        }
    }
}

/// Sends queued deliveries as they fall due, [`IN_FLIGHT_MAX`] at a time.
async fn deliver(webhooks: Weak<Webhooks>) {
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        let Some(hooks) = webhooks.upgrade() else { return };
        let (due, next) = hooks.take_due(IN_FLIGHT_MAX - in_flight.len());
        for delivery in due {
            let hooks = hooks.clone();
            in_flight.spawn(async move {
                let result = hooks.attempt(&delivery.notification).await;
                let delivery = Delivery { attempts: delivery.attempts + 1, ..delivery };
                hooks.settle(delivery, result);
            });
        }
        // Wait for a new notification, a finished attempt or the next due time,
        // without holding the sender (a stopped node drops it).
        let wait = next.map_or(POLL, |at| at.saturating_duration_since(tokio::time::Instant::now()).min(POLL));
        let wake = hooks.wake.clone();
        drop(hooks);
        tokio::select! {
            _ = wake.notified() => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The HTTP client: the 10 s timeout, no redirects (a receiver answers where it
/// was set), and the system's CA bundle for `https://` receivers (`SSL_CERT_FILE`,
/// or Debian's or Red Hat's bundle).
fn http_client() -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("synod/", env!("CARGO_PKG_VERSION")));
    let candidates = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"].map(Into::into));
    let mut roots = 0;
    for path in candidates {
        let Ok(pem) = std::fs::read(&path) else { continue };
        for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
            builder = builder.add_root_certificate(cert);
            roots += 1;
        }
        if roots > 0 {
            break;
        }
    }
    if roots == 0 {
        tracing::warn!(
            "no CA bundle found (SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt); https:// webhooks will fail"
        );
    }
    builder.build().map_err(|e| format!("cannot build the webhook HTTP client: {e}"))
}

/// A send error as one line, with its causes (the URL was removed: it may be a secret).
fn describe(error: reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
    } else if error.is_connect() {
        "could not connect".to_string()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The public key of the node's certificate.
fn identity_public_key(identity: &NodeIdentity) -> Result<[u8; 32], String> {
    let (_, x509) = x509_parser::parse_x509_certificate(&identity.cert_der)
        .map_err(|e| format!("the node certificate does not parse ({e}); webhooks cannot be signed"))?;
    let bytes: &[u8] = x509.public_key().subject_public_key.data.as_ref();
    bytes.try_into().map_err(|_| "the node certificate's key is not Ed25519; webhooks cannot be signed".to_string())
}

/// A URL cut to its origin: `https://hooks.example.com/…`.
fn url_shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}/…", u.origin().ascii_serialization()),
        Err(_) => "(unparseable)".into(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests;
