//! The sender's queue, backoff and records, over a memory store.

use super::*;

fn sender(store: Arc<dyn Store>) -> Arc<Webhooks> {
    let (_, mut identities) = crate::pki::in_memory_pki(&[1], &mut rand_core::OsRng).unwrap();
    let identity = Arc::new(identities.remove(0));
    Arc::new(Webhooks::new(store, identity, Metrics::new(1), Seams::production()))
}

fn notification(webhook: &str, n: u64) -> Notification {
    Notification {
        webhook: webhook.into(),
        url: "http://127.0.0.1:9/hook".into(),
        id: format!("{n:064x}"),
        event: WebhookEvent::Signed,
        body: b"{}".to_vec(),
    }
}

#[test]
fn webhooks_backoff_doubles_from_one_second_to_ten_minutes_with_jitter() {
    // Each retry waits between half and all of 1 s, 2 s, 4 s, ... capped at 10 min.
    let hooks = sender(Arc::new(crate::store::MemoryStore::new()));
    for attempts in 1..40u32 {
        let full = BACKOFF_MIN.saturating_mul(1 << (attempts - 1).min(16)).min(BACKOFF_MAX);
        for _ in 0..20 {
            let delay = hooks.backoff(attempts);
            assert!(delay <= full && delay >= full / 2, "attempt {attempts}: {delay:?} against {full:?}");
        }
    }
}

#[test]
fn webhooks_queue_is_bounded_drops_the_oldest_and_records_it() {
    // Past QUEUE_MAX the oldest delivery goes, counted in the webhook's status, which
    // the store keeps for the next start along with the cursor.
    let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new());
    let hooks = sender(store.clone());
    hooks.enqueue((0..QUEUE_MAX as u64 + 3).map(|n| notification("chat", n)).collect());
    let list = hooks.list(&BTreeMap::new());
    assert_eq!(list.webhooks.len(), 1);
    assert_eq!(list.webhooks[0].queued, QUEUE_MAX);
    assert_eq!(list.webhooks[0].delivery.dropped, 3);
    assert!(!list.webhooks[0].configured);
    hooks.save_cursor(42);
    let again = sender(store);
    assert_eq!(again.list(&BTreeMap::new()).webhooks[0].delivery.dropped, 3);
    assert_eq!(again.start_cursor(100), 42);
    assert_eq!(again.start_cursor(5000), 5000 - REPLAY_RECORDS_MAX);
}

#[tokio::test]
async fn webhooks_failed_attempt_is_recorded_and_queued_again() {
    // A receiver that is not there fails the attempt: the error is recorded (without the
    // URL) and the delivery waits for its retry.
    let hooks = sender(Arc::new(crate::store::MemoryStore::new()));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut n = notification("chat", 1);
    n.url = format!("http://{closed}/secret-token");
    let result = hooks.attempt(&n).await;
    let error = result.unwrap_err();
    assert!(!error.contains("secret-token"), "{error}");
    let delivery = Delivery {
        notification: n,
        queued_ms: hooks.seams.clock.now_ms(),
        attempts: 1,
        due: tokio::time::Instant::now(),
    };
    hooks.settle(delivery, Err(error));
    let list = hooks.list(&BTreeMap::new());
    assert_eq!(list.webhooks[0].queued, 1);
    assert_eq!(list.webhooks[0].delivery.failed_attempts, 1);
    assert!(list.webhooks[0].delivery.last_error.is_some());
}

#[test]
fn webhooks_url_is_shown_by_its_origin_only() {
    assert_eq!(url_shown("https://hooks.slack.com/services/T0/B0/secret"), "https://hooks.slack.com/…");
    assert_eq!(url_shown("http://127.0.0.1:8080/hook"), "http://127.0.0.1:8080/…");
}

#[test]
fn webhooks_one_receiver_that_never_answers_holds_two_attempts_not_all() {
    // A receiver that takes connections and never answers keeps its attempts in flight
    // until they time out: at most IN_FLIGHT_PER_WEBHOOK_MAX of them, so another
    // webhook's notifications are taken while they hang, and the slow one gets its
    // next attempt only when one of its own settles.
    let hooks = sender(Arc::new(crate::store::MemoryStore::new()));
    let mut notes: Vec<Notification> = (0..20).map(|n| notification("stuck", n)).collect();
    notes.extend((100..103).map(|n| notification("chat", n)));
    hooks.enqueue(notes);
    let (taken, _) = hooks.take_due(IN_FLIGHT_MAX);
    let count = |taken: &[Delivery], name: &str| taken.iter().filter(|d| d.notification.webhook == name).count();
    assert_eq!(count(&taken, "stuck"), IN_FLIGHT_PER_WEBHOOK_MAX);
    assert_eq!(count(&taken, "chat"), IN_FLIGHT_PER_WEBHOOK_MAX);
    let (more, _) = hooks.take_due(IN_FLIGHT_MAX);
    assert!(more.is_empty(), "both webhooks are at their limit");
    let mut taken = taken.into_iter();
    let chat = taken.find(|d| d.notification.webhook == "chat").unwrap();
    hooks.settle(chat, Ok(()));
    let (more, _) = hooks.take_due(IN_FLIGHT_MAX);
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].notification.webhook, "chat", "the stuck webhook is still at its limit");
}
