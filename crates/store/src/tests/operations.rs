//! Admin tokens, console sessions, retention, activity and the overview, on both backends.

use std::time::Duration;

use billhook_core::access::{Scope, digest, generate_session_secret, generate_token, token_hint};
use billhook_core::ids::{EventId, InboundId, TokenId};
use billhook_core::time::Timestamp;

use super::{
    Owed, backends, canonical_endpoint, deliver, delivery_for, event, execute_directly, inbound,
    ingest_owed_at, new_endpoint, normalized, postgres_config, postgres_session, runtime, switch,
    write,
};
use crate::*;

fn new_token(name: &str, scope: Scope) -> (String, NewToken) {
    let token = generate_token();
    let record = NewToken {
        id: TokenId::new(),
        name: name.to_owned(),
        scope,
        digest: digest(&token),
        hint: token_hint(&token),
        created_at: Timestamp::now(),
    };
    (token, record)
}

fn session_for(token_id: &str, token: &str, scope: Scope, ttl: Duration) -> (String, NewSession) {
    let cookie = generate_session_secret();
    let now = Timestamp::now();
    let session = NewSession {
        digest: digest(&cookie),
        token_id: token_id.to_owned(),
        token_digest: digest(token),
        scope,
        csrf: generate_session_secret(),
        created_at: now,
        expires_at: now.add(ttl),
    };
    (cookie, session)
}

#[test]
fn tokens_are_found_by_digest_until_revoked_and_take_their_sessions_along() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let (token, record) = new_token("ci", Scope::Read);
            let created = store.create_token(record.clone()).await.unwrap();
            assert_eq!(created.scope, Scope::Read);
            let found = store
                .token_by_digest(&digest(&token))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(found.id, record.id);
            assert_eq!(found.hint, token_hint(&token));
            assert!(
                store
                    .token_by_digest(&digest("bh_other"))
                    .await
                    .unwrap()
                    .is_none()
            );

            let now = Timestamp::from_unix_millis(Timestamp::now().unix_millis());
            store.touch_token(record.id, now).await.unwrap();
            let listed = store.tokens().await.unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].last_used_at, Some(now));

            let (cookie, session) = session_for(
                &record.id.to_string(),
                &token,
                Scope::Read,
                Duration::from_secs(60),
            );
            let csrf = session.csrf.clone();
            store.create_session(session).await.unwrap();
            let live = store
                .session(&digest(&cookie), Timestamp::now())
                .await
                .unwrap()
                .unwrap();
            assert!(live.token_live);
            assert_eq!(live.csrf, csrf);
            assert_eq!(live.scope, Scope::Read);

            assert!(
                store
                    .revoke_token(record.id, Timestamp::now())
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .revoke_token(record.id, Timestamp::now())
                    .await
                    .unwrap()
            );
            assert!(
                store
                    .token_by_digest(&digest(&token))
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(
                store
                    .session(&digest(&cookie), Timestamp::now())
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(store.tokens().await.unwrap()[0].revoked_at.is_some());
        }
    });
}

#[test]
fn sessions_expire_and_can_be_ended() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let (cookie, session) = session_for(
                ROOT_TOKEN,
                "root-token",
                Scope::Admin,
                Duration::from_secs(60),
            );
            store.create_session(session).await.unwrap();
            let live = store
                .session(&digest(&cookie), Timestamp::now())
                .await
                .unwrap()
                .unwrap();
            assert!(live.token_live);
            assert_eq!(live.token_digest, digest("root-token"));
            let later = Timestamp::now().add(Duration::from_secs(120));
            assert!(
                store
                    .session(&digest(&cookie), later)
                    .await
                    .unwrap()
                    .is_none()
            );
            assert_eq!(store.prune_sessions(later).await.unwrap(), 1);

            let (cookie, session) = session_for(
                ROOT_TOKEN,
                "root-token",
                Scope::Admin,
                Duration::from_secs(60),
            );
            store.create_session(session).await.unwrap();
            store.delete_session(&digest(&cookie)).await.unwrap();
            assert!(
                store
                    .session(&digest(&cookie), Timestamp::now())
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    });
}

/// A message received `at`, as ingest stores it.
fn received_at(key: &str, status: InboundStatus, at: Timestamp) -> NewInbound {
    let mut request = inbound("rzp", key, status);
    request.id = InboundId::new_at(at);
    request.received_at = at;
    request
}

#[test]
fn retention_removes_finished_old_messages_and_keeps_what_is_owed_or_quarantined() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let old = Timestamp::now().sub(Duration::from_secs(40 * 86_400));
            // Kept, and older than everything removed, so each batch must get past them.
            // An old message still owed to an endpoint: its delivery waits to be retried.
            let owed = ingest_owed_at(store, &endpoint, "old-owed", old).await;
            // An old quarantined message, and one reprocessed just now: its events are new.
            let quarantined = received_at("old-quarantined", InboundStatus::Quarantined, old);
            store
                .ingest(write(quarantined.clone(), Vec::new()))
                .await
                .unwrap();
            let reprocessed = received_at("old-reprocessed", InboundStatus::Quarantined, old);
            store
                .ingest(write(reprocessed.clone(), Vec::new()))
                .await
                .unwrap();
            store
                .reprocess(reprocessed.id, normalized("old-reprocessed"))
                .await
                .unwrap();
            // A finished old message: delivered, with an attempt.
            let finished = ingest_owed_at(store, &endpoint, "old-finished", old).await;
            deliver(store, &finished, endpoint.id).await;
            let (finished_event, finished) = (finished.event, finished.inbound);
            // An old message held for an endpoint left disabled: kept only as long as
            // retention keeps anything, or one such endpoint would keep every message for good.
            switch(store, endpoint.id, false, Timestamp::now()).await;
            let held = received_at("old-held", InboundStatus::Processed, old);
            let held_event = event("rzp", "invoice.paid", "inv_held");
            let mut ingest = write(held.clone(), vec![held_event.clone()]);
            let mut held_delivery = delivery_for(&endpoint, Some(&held_event), held.id);
            held_delivery.status = DeliveryStatus::Held;
            ingest.deliveries = vec![held_delivery];
            store.ingest(ingest).await.unwrap();
            let recent = inbound("rzp", "recent", InboundStatus::Processed);
            store
                .ingest(write(
                    recent.clone(),
                    vec![event("rzp", "invoice.paid", "inv_new")],
                ))
                .await
                .unwrap();

            let cutoff =
                InboundId::lower_bound(Timestamp::now().sub(Duration::from_secs(30 * 86_400)));
            let preview = store.prune_preview(cutoff).await.unwrap();
            let expected = PruneReport {
                inbound: 2,
                events: 2,
                deliveries: 2,
                attempts: 1,
                payload_bytes: (finished.body.len() + held.body.len()) as u64,
            };
            assert_eq!(preview, expected);
            // A batch that starts after the last old message finds nothing. (Ids made at one
            // past time need not sort in the order they were made.)
            let last_old = [
                owed.inbound.id,
                quarantined.id,
                reprocessed.id,
                finished.id,
                held.id,
            ]
            .into_iter()
            .max();
            let past_all = store.prune(cutoff, last_old, 10).await.unwrap();
            assert_eq!(past_all, PruneBatch::default());
            // Batches of one: the work is split, each batch goes on after the last, and the
            // sum is the preview.
            let mut total = PruneReport::default();
            let mut after = None;
            let mut batches = 0;
            loop {
                let batch = store.prune(cutoff, after, 1).await.unwrap();
                assert!(batch.removed.inbound <= 1, "{batch:?}");
                total.add(batch.removed);
                batches += 1;
                after = batch.resume_after;
                if after.is_none() {
                    break;
                }
            }
            assert_eq!(total, expected);
            assert!(
                batches <= 3,
                "one batch per message and one to see the end: {batches}"
            );
            assert_eq!(
                store.prune_preview(cutoff).await.unwrap(),
                PruneReport::default()
            );

            assert!(store.inbound(finished.id).await.unwrap().is_none());
            assert!(store.event(finished_event.id).await.unwrap().is_none());
            assert!(store.inbound(held.id).await.unwrap().is_none());
            // Acknowledged and never processed: kept for reprocessing, however old.
            assert!(store.inbound(quarantined.id).await.unwrap().is_some());
            assert!(store.inbound(reprocessed.id).await.unwrap().is_some());
            assert!(store.inbound(owed.inbound.id).await.unwrap().is_some());
            assert!(store.event(owed.event.id).await.unwrap().is_some());
            assert!(store.inbound(recent.id).await.unwrap().is_some());
        }
    });
}

/// A batch of large bodies stops at its byte budget (8 MiB, one message at least) and the next
/// goes on after it: SQLite's one writer reads every body it removes, and on PostgreSQL such a
/// batch could outlast `statement_timeout` at every run.
#[test]
fn a_prune_batch_of_large_bodies_stops_at_its_byte_budget() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let old = Timestamp::now().sub(Duration::from_secs(40 * 86_400));
            for n in 0..3 {
                let mut large = received_at(&format!("large-{n}"), InboundStatus::Processed, old);
                large.body = bytes::Bytes::from(vec![b' '; 5 * 1024 * 1024]);
                store.ingest(write(large, Vec::new())).await.unwrap();
            }
            let cutoff =
                InboundId::lower_bound(Timestamp::now().sub(Duration::from_secs(30 * 86_400)));
            let first = store.prune(cutoff, None, 10).await.unwrap();
            assert_eq!(first.removed.inbound, 1, "{first:?}");
            let mut removed = first.removed.inbound;
            let mut after = first.resume_after;
            while after.is_some() {
                let batch = store.prune(cutoff, after, 10).await.unwrap();
                assert_eq!(batch.removed.inbound, 1, "{batch:?}");
                removed += batch.removed.inbound;
                after = batch.resume_after;
            }
            assert_eq!(removed, 3);
        }
    });
}

/// Two endpoints of canonical events, `first` and `second`.
async fn two_endpoints(store: &Store) -> (EndpointRecord, EndpointRecord) {
    let create = |name| store.create_endpoint(new_endpoint("canonical", Some(name)));
    (
        create("first").await.unwrap(),
        create("second").await.unwrap(),
    )
}

/// A redelivery that meets retention removing its message redelivers nothing: it waits for the
/// removal and finds the message gone, rather than leaving new deliveries owed for an event that
/// no longer exists. (PostgreSQL only: on SQLite both are jobs of the one writer.)
#[test]
fn a_redelivery_racing_retention_leaves_no_delivery_behind() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let store = Store::open(&config).await.unwrap();
        let (first, second) = two_endpoints(&store).await;
        let old = Timestamp::now().sub(Duration::from_secs(40 * 86_400));
        let delivered = ingest_owed_at(&store, &first, "old-delivered", old).await;
        deliver(&store, &delivered, first.id).await;
        let (old_event, message) = (delivered.event, delivered.inbound);

        // Another instance's retention has taken the message and removed its rows, and has not
        // committed yet.
        let mut retention = postgres_session(&config).await;
        let removal = retention.transaction().await.unwrap();
        let id = message.id.to_string();
        removal
            .execute("SELECT 1 FROM inbound WHERE id = $1 FOR UPDATE", &[&id])
            .await
            .unwrap();
        let removals = [
            "DELETE FROM attempts WHERE delivery_id IN
                (SELECT id FROM deliveries WHERE inbound_id = $1)",
            "DELETE FROM deliveries WHERE inbound_id = $1",
            "DELETE FROM events WHERE inbound_id = $1",
            "DELETE FROM inbound WHERE id = $1",
        ];
        for sql in removals {
            assert_eq!(removal.execute(sql, &[&id]).await.unwrap(), 1, "{sql}");
        }

        // An operator asks for the event again, to both endpoints.
        let redelivery = tokio::spawn({
            let store = store.clone();
            let create = vec![delivery_for(&second, Some(&old_event), message.id)];
            async move {
                store
                    .redeliver(old_event.id, None, create, Timestamp::now())
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !redelivery.is_finished(),
            "the redelivery waits for the message it names"
        );
        removal.commit().await.unwrap();

        let redelivered = redelivery.await.unwrap().unwrap();
        assert_eq!(redelivered, Vec::<DeliveryId>::new());
        let left: i64 = retention
            .query_one(
                "SELECT count(*) FROM deliveries WHERE inbound_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "no delivery is owed for the removed event");
    });
}

/// Two redeliveries naming an endpoint that never had the event each found none before they
/// began (the API asks first): the second finds the first's delivery, resets it and makes none.
#[test]
fn redeliveries_naming_a_new_endpoint_make_one_delivery() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let (first, second) = two_endpoints(store).await;
            let owed = ingest_owed_at(store, &first, "to-a-new-endpoint", Timestamp::now()).await;
            let (event, message) = (owed.event, owed.inbound);
            let redeliver = || {
                let create = vec![delivery_for(&second, Some(&event), message.id)];
                store.redeliver(event.id, Some(second.id), create, Timestamp::now())
            };
            let made = redeliver().await.unwrap();
            let again = redeliver().await.unwrap();
            assert_eq!(made.len(), 1);
            assert_eq!(again, made, "the second resends the first's delivery");
            let to_second = store
                .deliveries_of_event(event.id, message.id)
                .await
                .unwrap()
                .into_iter()
                .filter(|(delivery, _)| delivery.endpoint_id == second.id)
                .count();
            assert_eq!(to_second, 1);
        }
    });
}

/// The same for an announcement whose message was already gone: retention holds the event
/// itself as it removes it, and a redelivery waits for that and then finds nothing.
#[test]
fn a_redelivery_racing_retention_of_an_announcement_leaves_no_delivery_behind() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let store = Store::open(&config).await.unwrap();
        let (first, second) = two_endpoints(&store).await;
        let old = Timestamp::now().sub(Duration::from_secs(40 * 86_400));
        let announced = announced_at(&store, &first, "old-announcement", old).await;
        deliver(&store, &announced, first.id).await;
        let message = announced.inbound.id.to_string();
        execute_directly(&config, "DELETE FROM inbound WHERE id = $1", &message).await;

        // Another instance's retention has taken the event and removed its rows, and has not
        // committed yet.
        let mut retention = postgres_session(&config).await;
        let removal = retention.transaction().await.unwrap();
        let id = announced.event.id.to_string();
        removal
            .execute("SELECT 1 FROM events WHERE id = $1 FOR UPDATE", &[&id])
            .await
            .unwrap();
        for sql in [
            "DELETE FROM attempts WHERE delivery_id IN
                (SELECT id FROM deliveries WHERE event_id = $1)",
            "DELETE FROM deliveries WHERE event_id = $1",
            "DELETE FROM events WHERE id = $1",
        ] {
            assert_eq!(removal.execute(sql, &[&id]).await.unwrap(), 1, "{sql}");
        }

        let redelivery = tokio::spawn({
            let store = store.clone();
            let create = vec![delivery_for(
                &second,
                Some(&announced.event),
                announced.inbound.id,
            )];
            async move {
                store
                    .redeliver(announced.event.id, None, create, Timestamp::now())
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !redelivery.is_finished(),
            "the redelivery waits for the event it names"
        );
        removal.commit().await.unwrap();

        assert_eq!(redelivery.await.unwrap().unwrap(), Vec::<DeliveryId>::new());
        let left: i64 = retention
            .query_one(
                "SELECT count(*) FROM deliveries WHERE inbound_id = $1",
                &[&message],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "no delivery is owed for the removed event");
    });
}

/// A recovery that meets retention removing its message leaves the message whole or gone,
/// never without some of its deliveries. (PostgreSQL only: on SQLite both are jobs of the one
/// writer.)
#[test]
fn a_recovery_racing_retention_keeps_a_message_whole_or_removes_it() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let store = Store::open(&config).await.unwrap();
        let (first, second) = two_endpoints(&store).await;
        let old = Timestamp::now().sub(Duration::from_secs(40 * 86_400));
        // One message, delivered to the first endpoint and given up on by the second.
        let mut request = inbound("rzp", "old-half-dead", InboundStatus::Processed);
        request.id = InboundId::new_at(old);
        request.received_at = old;
        let paid = event("rzp", "invoice.paid", "old-half-dead");
        let mut ingest = write(request.clone(), vec![paid.clone()]);
        ingest.deliveries = vec![
            delivery_for(&first, Some(&paid), request.id),
            delivery_for(&second, Some(&paid), request.id),
        ];
        let owed = Owed {
            delivery: ingest.deliveries[0].id,
            inbound: request,
            event: paid,
        };
        store.ingest(ingest).await.unwrap();
        deliver(&store, &owed, first.id).await;
        let session = postgres_session(&config).await;
        let message = owed.inbound.id.to_string();
        session
            .execute(
                "UPDATE deliveries SET status = 'dead' WHERE endpoint_id = $1",
                &[&second.id.to_string()],
            )
            .await
            .unwrap();
        let count = |sql: &'static str| {
            let session = &session;
            let message = message.clone();
            async move {
                session
                    .query_one(sql, &[&message])
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
            }
        };
        let deliveries = "SELECT count(*) FROM deliveries WHERE inbound_id = $1";
        assert_eq!(count(deliveries).await, 2);

        // Retention is held up after choosing the message, before removing its attempts.
        let mut blocker = postgres_session(&config).await;
        let hold = blocker.transaction().await.unwrap();
        hold.execute("LOCK TABLE attempts IN SHARE ROW EXCLUSIVE MODE", &[])
            .await
            .unwrap();
        let cutoff = InboundId::lower_bound(Timestamp::now().sub(Duration::from_secs(30 * 86_400)));
        let retention = tokio::spawn({
            let store = store.clone();
            async move { store.prune(cutoff, None, 10).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let recovery = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .recover(second.id, old.sub(Duration::from_secs(1)), Timestamp::now())
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        hold.commit().await.unwrap();
        retention.await.unwrap().unwrap();
        let recovered = recovery.await.unwrap().unwrap().resent;

        let left = count(deliveries).await;
        let inbound = count("SELECT count(*) FROM inbound WHERE id = $1").await;
        assert!(
            (left, inbound, recovered) == (0, 0, 0) || (left, inbound, recovered) == (2, 1, 1),
            "deliveries {left}, message {inbound}, recovered {recovered}"
        );
    });
}

#[test]
fn activity_adds_up_across_flushes_and_instances() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let counts = |ingested, delivered| ActivityCounts {
                ingested,
                delivered,
                ..ActivityCounts::default()
            };
            store.record_activity("a", 100, counts(3, 2)).await.unwrap();
            store.record_activity("a", 100, counts(1, 1)).await.unwrap();
            store.record_activity("b", 100, counts(5, 0)).await.unwrap();
            store.record_activity("a", 101, counts(0, 7)).await.unwrap();
            store.record_activity("a", 90, counts(9, 9)).await.unwrap();
            let minutes = store.activity(100).await.unwrap();
            assert_eq!(
                minutes,
                vec![
                    ActivityMinute {
                        minute: 100,
                        counts: counts(9, 3)
                    },
                    ActivityMinute {
                        minute: 101,
                        counts: counts(0, 7)
                    },
                ]
            );
            assert_eq!(store.prune_activity(100).await.unwrap(), 1);
            assert_eq!(store.activity(0).await.unwrap().len(), 2);
        }
    });
}

#[test]
fn the_overview_and_source_figures_count_what_needs_attention() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            assert_eq!(store.overview().await.unwrap(), Overview::default());
            let endpoint = canonical_endpoint(store).await;
            let request = inbound("rzp", "overview-1", InboundStatus::Processed);
            let paid = event("rzp", "invoice.paid", "inv_1");
            let mut ingest = write(request.clone(), vec![paid.clone()]);
            ingest.deliveries = vec![delivery_for(&endpoint, Some(&paid), request.id)];
            store.ingest(ingest).await.unwrap();
            store
                .ingest(write(
                    inbound("rzp", "overview-2", InboundStatus::Quarantined),
                    Vec::new(),
                ))
                .await
                .unwrap();
            let overview = store.overview().await.unwrap();
            assert_eq!(overview.pending_deliveries, 1);
            assert!(overview.oldest_pending.is_some());
            assert_eq!(overview.quarantined, 1);
            assert_eq!(overview.disabled_endpoints, 0);

            let hour_ago = Timestamp::now().sub(Duration::from_secs(3600));
            let stats = store
                .source_stats(vec!["rzp".to_owned(), "silent".to_owned()], hour_ago)
                .await
                .unwrap();
            assert_eq!(stats[0].source, "rzp");
            assert_eq!(stats[0].received_since, 2);
            assert_eq!(stats[0].quarantined, 1);
            assert!(stats[0].last_received_at.is_some());
            assert_eq!(stats[1].received_since, 0);
            assert_eq!(stats[1].last_inbound, None);
        }
    });
}

/// One event owed to `endpoint`, its message and its id both made at `at`: a ledger
/// announcement is a fresh event, and its age, not its message's, says when it may go.
async fn announced_at(store: &Store, endpoint: &EndpointRecord, key: &str, at: Timestamp) -> Owed {
    let mut request = received_at(key, InboundStatus::Processed, at);
    request.body = bytes::Bytes::from_static(b"{}");
    let mut announcement = event("rzp", "payment.unmatched", key);
    announcement.id = EventId::new_at(at);
    let mut ingest = write(request.clone(), vec![announcement.clone()]);
    ingest.deliveries = vec![delivery_for(endpoint, Some(&announcement), request.id)];
    let delivery = ingest.deliveries[0].id;
    store.ingest(ingest).await.unwrap();
    Owed {
        delivery,
        inbound: request,
        event: announcement,
    }
}

/// An announcement filed under a message retention had already removed (a payment announced
/// unmatched after a long stop) goes once it is as old as retention keeps, with its delivery
/// and attempt: the message-by-message batches never reach it. One still owed stays, and so
/// do recent ones and old ones whose message is kept.
#[test]
fn announcements_whose_message_is_gone_are_pruned_once_old() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let old = Timestamp::now().sub(Duration::from_secs(40 * 86_400));
            let finished = announced_at(store, &endpoint, "orphan-finished", old).await;
            deliver(store, &finished, endpoint.id).await;
            let owed = announced_at(store, &endpoint, "orphan-owed", old).await;
            let recent = announced_at(store, &endpoint, "orphan-recent", Timestamp::now()).await;
            deliver(store, &recent, endpoint.id).await;
            // Old, still owed, and its message kept for it: not an orphan.
            let kept = announced_at(store, &endpoint, "kept-with-message", old).await;
            for gone in [&finished, &owed, &recent] {
                execute_directly(
                    &test.config,
                    "DELETE FROM inbound WHERE id = $1",
                    &gone.inbound.id.to_string(),
                )
                .await;
            }

            let cutoff =
                InboundId::lower_bound(Timestamp::now().sub(Duration::from_secs(30 * 86_400)));
            let expected = PruneReport {
                events: 1,
                deliveries: 1,
                attempts: 1,
                ..PruneReport::default()
            };
            assert_eq!(store.prune_preview(cutoff).await.unwrap(), expected);
            assert_eq!(
                store.prune(cutoff, None, 10).await.unwrap(),
                PruneBatch::default(),
                "no message may go"
            );
            let before = EventId::lower_bound(cutoff.created_at());
            let mut total = PruneReport::default();
            let mut after = None;
            loop {
                let batch = store.prune_orphaned_events(before, after, 1).await.unwrap();
                assert!(batch.removed.events <= 1, "{batch:?}");
                total.add(batch.removed);
                after = batch.resume_after;
                if after.is_none() {
                    break;
                }
            }
            assert_eq!(total, expected);
            assert_eq!(
                store.prune_preview(cutoff).await.unwrap(),
                PruneReport::default()
            );

            assert!(store.event(finished.event.id).await.unwrap().is_none());
            assert!(store.delivery(finished.delivery).await.unwrap().is_none());
            for stays in [&owed, &recent, &kept] {
                assert!(store.event(stays.event.id).await.unwrap().is_some());
                assert!(store.delivery(stays.delivery).await.unwrap().is_some());
            }
        }
    });
}
