//! The store test suite. Every test runs against each backend through [`backends`], so SQLite
//! and PostgreSQL are held to the same behaviour.

use std::path::PathBuf;
use std::time::Duration;

use billhook_core::ids::{EventId, InboundId};
use billhook_core::time::Timestamp;
use bytes::Bytes;

use crate::*;

/// A fresh, empty store per backend for one test. Keeps its temporary directory alive.
struct TestStore {
    store: Store,
    config: DatabaseConfig,
    _dir: tempfile::TempDir,
}

/// One store per backend: an SQLite file in a new directory, and a new PostgreSQL schema.
async fn backends() -> Vec<TestStore> {
    let mut stores = Vec::new();
    for config in [sqlite_config(), postgres_config().await] {
        let (config, dir) = config;
        let store = Store::open(&config).await.unwrap();
        stores.push(TestStore {
            store,
            config,
            _dir: dir,
        });
    }
    stores
}

fn sqlite_config() -> (DatabaseConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("nested/billhook.db");
    (DatabaseConfig::Sqlite { path }, dir)
}

/// A fresh schema in the test PostgreSQL (`BILLHOOK_TEST_POSTGRES_URL`, default the local
/// server's `test` database).
pub(crate) async fn postgres_config() -> (DatabaseConfig, tempfile::TempDir) {
    postgres_config_named("").await
}

/// Like [`postgres_config`], the schema's name ending in `suffix` (no spaces or `"`).
async fn postgres_config_named(suffix: &str) -> (DatabaseConfig, tempfile::TempDir) {
    let base = std::env::var("BILLHOOK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = fresh_schema(&base, suffix).await;
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D%22{schema}%22");
    let mut options = PostgresOptions::new(&url);
    options.pool_size = 4;
    options.wait = Duration::ZERO;
    (
        DatabaseConfig::Postgres(options),
        tempfile::tempdir().unwrap(),
    )
}

/// Creates an empty schema for one test (dropping test schemas older than an hour).
async fn fresh_schema(base: &str, suffix: &str) -> String {
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("the test PostgreSQL at {base} is not reachable: {e}"));
    tokio::spawn(connection);
    let now = Timestamp::now().unix_millis();
    let stale = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'billhook_test_%'",
            &[],
        )
        .await
        .unwrap();
    for row in stale {
        let name: String = row.get(0);
        let created: i64 = name
            .split('_')
            .nth(2)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        if created < now - 3_600_000 {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await;
        }
    }
    let schema = format!("billhook_test_{now}_{:08x}{suffix}", rand::random::<u32>());
    client
        .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
        .await
        .unwrap();
    schema
}

/// A connection of its own to the schema of a PostgreSQL `config`, for a test to act as another
/// session (another instance, or an operator with `psql`) would.
async fn postgres_session(config: &DatabaseConfig) -> tokio_postgres::Client {
    let DatabaseConfig::Postgres(options) = config else {
        unreachable!("a PostgreSQL configuration")
    };
    let (client, connection) = tokio_postgres::connect(&options.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn inbound(source: &str, key: &str, status: InboundStatus) -> NewInbound {
    NewInbound {
        id: InboundId::new(),
        source: source.to_owned(),
        provider: "razorpay".to_owned(),
        received_at: Timestamp::now(),
        status,
        provider_event: Some("invoice.paid".to_owned()),
        provider_event_id: Some(key.to_owned()),
        dedup_key: key.to_owned(),
        body_dedup_key: None,
        verification: "razorpay-signature: current secret (1 of 1)".to_owned(),
        remote_addr: Some("127.0.0.1".to_owned()),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: Bytes::from_static(b"{\"ID\": 699158487875191900}"),
        error: (status == InboundStatus::Quarantined).then(|| RecordedError {
            code: "invalid_json".to_owned(),
            message: "expected value".to_owned(),
        }),
    }
}

fn event(source: &str, event_type: &'static str, subject: &str) -> NewEvent {
    let id = EventId::new();
    NewEvent {
        id,
        event_type,
        source: source.to_owned(),
        subject_kind: "invoice",
        subject_id: subject.to_owned(),
        occurred_at: Timestamp::from_unix_millis(1_567_687_078_000),
        received_at: Timestamp::now(),
        payload: Bytes::from(format!("{{\"id\":\"{id}\",\"amount\":9007199254740993}}")),
    }
}

fn write(inbound: NewInbound, events: Vec<NewEvent>) -> IngestWrite {
    IngestWrite {
        inbound,
        events,
        deliveries: Vec::new(),
        facts: Vec::new(),
        concluder: None,
        dedup_expires_at: Timestamp::now().add(Duration::from_secs(8 * 86_400)),
    }
}

/// The newest hundred events stored.
async fn newest_hundred_events(store: &Store) -> Page<EventRecord> {
    store
        .events(EventQuery {
            after: None,
            limit: 100,
            ..EventQuery::default()
        })
        .await
        .unwrap()
}

#[test]
fn ingest_stores_the_request_and_its_events_byte_for_byte() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let request = inbound("rzp", "evt-1", InboundStatus::Processed);
            let events = vec![
                event("rzp", "invoice.paid", "inv_1"),
                event("rzp", "payment.succeeded", "pay_1"),
            ];
            let expected_ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
            let payload = events[0].payload.clone();
            let outcome = store.ingest(write(request.clone(), events)).await.unwrap();
            assert_eq!(
                outcome,
                IngestOutcome::Stored {
                    inbound_id: request.id,
                    event_ids: expected_ids.clone(),
                    concluded: Vec::new(),
                }
            );
            let stored = store.inbound(request.id).await.unwrap().unwrap();
            assert_eq!(stored.body.as_deref(), Some(&request.body[..]));
            assert_eq!(stored.headers, request.headers);
            assert_eq!(stored.status, InboundStatus::Processed);
            let mut sorted = expected_ids.clone();
            sorted.sort();
            assert_eq!(stored.event_ids, sorted);
            let first = store.event(expected_ids[0]).await.unwrap().unwrap();
            assert_eq!(first.payload, payload);
            assert_eq!(first.inbound_id, request.id);
            assert_eq!(first.occurred_at.unix_millis(), 1_567_687_078_000);
        }
    });
}

#[test]
fn a_held_dedup_key_stores_nothing_and_returns_the_original() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let first = inbound("zw", "payments.created:evl_1", InboundStatus::Processed);
            let first_event = event("zw", "payment.created", "tx_1");
            let first_event_id = first_event.id;
            store
                .ingest(write(first.clone(), vec![first_event]))
                .await
                .unwrap();
            let again = inbound("zw", "payments.created:evl_1", InboundStatus::Processed);
            let outcome = store
                .ingest(write(
                    again.clone(),
                    vec![event("zw", "payment.created", "tx_1")],
                ))
                .await
                .unwrap();
            assert_eq!(
                outcome,
                IngestOutcome::Duplicate {
                    inbound_id: first.id,
                    event_ids: vec![first_event_id]
                }
            );
            assert!(store.inbound(again.id).await.unwrap().is_none());
            let all = newest_hundred_events(store).await;
            assert_eq!(all.items.len(), 1);
            // The same key on another source is a different message.
            let other_source = inbound("zw-2", "payments.created:evl_1", InboundStatus::Processed);
            assert!(matches!(
                store.ingest(write(other_source, vec![])).await.unwrap(),
                IngestOutcome::Stored { .. }
            ));
        }
    });
}

/// The same write again, as after a commit whose answer was lost, finds its own request
/// holding the key: it was stored, once, and is answered so.
#[test]
fn a_write_stored_already_is_answered_as_stored_once() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let request = inbound("zw", "payments.created:evl_2", InboundStatus::Processed);
            let payment = event("zw", "payment.created", "tx_2");
            let stored = IngestOutcome::Stored {
                inbound_id: request.id,
                event_ids: vec![payment.id],
                concluded: Vec::new(),
            };
            let endpoint = canonical_endpoint(store).await;
            let mut once = write(request.clone(), vec![payment.clone()]);
            once.deliveries = vec![delivery_for(&endpoint, Some(&payment), request.id)];
            assert_eq!(store.ingest(once.clone()).await.unwrap(), stored);
            assert_eq!(store.ingest(once).await.unwrap(), stored);
            let owed = store
                .deliveries_of_event(payment.id, request.id)
                .await
                .unwrap();
            assert_eq!(owed.len(), 1, "{owed:?}");
            let all = newest_hundred_events(store).await;
            assert_eq!(all.items.len(), 1);
            // Another request with the key is still a duplicate of the first.
            let again = inbound("zw", "payments.created:evl_2", InboundStatus::Processed);
            assert_eq!(
                store.ingest(write(again, vec![])).await.unwrap(),
                IngestOutcome::Duplicate {
                    inbound_id: request.id,
                    event_ids: all.items.iter().map(|e| e.id).collect(),
                }
            );
        }
    });
}

/// A request with two keys (Razorpay's unsigned event id and its body's hash) is a duplicate
/// under either, and one refused under its second key gives up the first it took: the id is
/// free for a message that is new.
#[test]
fn a_request_is_a_duplicate_under_either_key_and_keeps_no_key_when_refused() {
    fn keyed(event_key: &str, body_key: &str) -> NewInbound {
        let mut request = inbound("rzp", event_key, InboundStatus::Processed);
        request.body_dedup_key = Some(body_key.to_owned());
        request
    }
    async fn outcome(store: &Store, request: &NewInbound) -> IngestOutcome {
        let payment = event("rzp", "payment.succeeded", &request.dedup_key);
        store
            .ingest(write(request.clone(), vec![payment]))
            .await
            .unwrap()
    }
    fn duplicate_of(outcome: &IngestOutcome) -> Option<InboundId> {
        match outcome {
            IngestOutcome::Duplicate { inbound_id, .. } => Some(*inbound_id),
            IngestOutcome::Stored { .. } => None,
        }
    }
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let original = keyed("event:1", "sha256:a");
            let IngestOutcome::Stored { event_ids, .. } = outcome(store, &original).await else {
                panic!("the first request is stored");
            };
            // The body again under a new id, then the id again with another body.
            for copy in [keyed("event:2", "sha256:a"), keyed("event:1", "sha256:b")] {
                assert_eq!(
                    outcome(store, &copy).await,
                    IngestOutcome::Duplicate {
                        inbound_id: original.id,
                        event_ids: event_ids.clone(),
                    }
                );
                assert!(store.inbound(copy.id).await.unwrap().is_none());
            }
            let new = keyed("event:2", "sha256:b");
            assert_eq!(duplicate_of(&outcome(store, &new).await), None);

            // Copies and new requests at once (PostgreSQL writes them in groups).
            let originals: Vec<NewInbound> = (0..6)
                .map(|i| keyed(&format!("event:o{i}"), &format!("sha256:o{i}")))
                .collect();
            for request in &originals {
                assert_eq!(duplicate_of(&outcome(store, request).await), None);
            }
            let copies: Vec<NewInbound> = (0..6)
                .map(|i| keyed(&format!("event:c{i}"), &format!("sha256:o{i}")))
                .collect();
            let news: Vec<NewInbound> = (0..6)
                .map(|i| keyed(&format!("event:n{i}"), &format!("sha256:n{i}")))
                .collect();
            let outcomes = futures_util::future::join_all(
                copies.iter().chain(&news).map(|r| outcome(store, r)),
            )
            .await;
            let (of_copies, of_news) = outcomes.split_at(copies.len());
            for (original, copy) in originals.iter().zip(of_copies) {
                assert_eq!(duplicate_of(copy), Some(original.id));
            }
            assert!(
                of_news.iter().all(|o| duplicate_of(o).is_none()),
                "{of_news:?}"
            );
            // The copies' ids were given up; the new requests keep both their keys.
            for (i, new) in news.iter().enumerate() {
                let reusing = keyed(&format!("event:c{i}"), &format!("sha256:r{i}"));
                assert_eq!(duplicate_of(&outcome(store, &reusing).await), None);
                let copy_of_new = keyed(&format!("event:x{i}"), &format!("sha256:n{i}"));
                assert_eq!(
                    duplicate_of(&outcome(store, &copy_of_new).await),
                    Some(new.id)
                );
            }
            // A stored request written again (its answer lost) is still answered as stored.
            let again = write(news[0].clone(), Vec::new());
            assert!(matches!(
                store.ingest(again).await.unwrap(),
                IngestOutcome::Stored { inbound_id, .. } if inbound_id == news[0].id
            ));
            let copy_of_new = keyed("event:y", "sha256:n0");
            assert_eq!(
                duplicate_of(&outcome(store, &copy_of_new).await),
                Some(news[0].id)
            );
            // A body key equal to the main key is one key, claimed once.
            let alike = keyed("sha256:same", "sha256:same");
            assert_eq!(duplicate_of(&outcome(store, &alike).await), None);
            let copy_of_alike = keyed("event:z", "sha256:same");
            assert_eq!(
                duplicate_of(&outcome(store, &copy_of_alike).await),
                Some(alike.id)
            );
            let all = newest_hundred_events(store).await;
            assert_eq!(all.items.len(), 2 + 6 + 6 + 6 + 1);
        }
    });
}

#[test]
fn expired_dedup_keys_are_reusable_and_pruned() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let mut first = write(inbound("s", "k", InboundStatus::Processed), vec![]);
            first.dedup_expires_at = Timestamp::now().sub(Duration::from_secs(1));
            store.ingest(first).await.unwrap();
            let second = inbound("s", "k", InboundStatus::Processed);
            assert!(matches!(
                store.ingest(write(second, vec![])).await.unwrap(),
                IngestOutcome::Stored { .. }
            ));
            let mut stale = write(inbound("s", "old", InboundStatus::Processed), vec![]);
            stale.dedup_expires_at = Timestamp::now().sub(Duration::from_secs(1));
            store.ingest(stale).await.unwrap();
            assert_eq!(store.prune_dedup(Timestamp::now(), 100).await.unwrap(), 1);
            assert_eq!(store.prune_dedup(Timestamp::now(), 100).await.unwrap(), 0);
        }
    });
}

#[test]
fn events_filter_and_paginate_newest_first() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let mut ids = Vec::new();
            for n in 0..7 {
                let kind = if n % 2 == 0 {
                    "invoice.paid"
                } else {
                    "payment.failed"
                };
                let e = event(
                    if n < 5 { "a" } else { "b" },
                    kind,
                    &format!("subj_{}", n % 3),
                );
                ids.push(e.id);
                store
                    .ingest(write(
                        inbound("a", &format!("k{n}"), InboundStatus::Processed),
                        vec![e],
                    ))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let page = store
                    .events(EventQuery {
                        before: cursor,
                        after: None,
                        limit: 3,
                        ..EventQuery::default()
                    })
                    .await
                    .unwrap();
                seen.extend(page.items.iter().map(|e| e.id));
                match page.next_cursor {
                    Some(next) => cursor = Some(next.parse().unwrap()),
                    None => break,
                }
            }
            let mut newest_first = ids.clone();
            newest_first.reverse();
            assert_eq!(seen, newest_first);

            let paid = store
                .events(EventQuery {
                    event_type: Some("invoice.paid".into()),
                    after: None,
                    limit: 100,
                    ..EventQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(paid.items.len(), 4);
            let source_b = store
                .events(EventQuery {
                    source: Some("b".into()),
                    after: None,
                    limit: 100,
                    ..EventQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(source_b.items.len(), 2);
            let subject = store
                .events(EventQuery {
                    subject: Some("subj_0".into()),
                    after: None,
                    limit: 100,
                    ..EventQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(subject.items.len(), 3);
        }
    });
}

/// Quarantined requests page in either order, so a backlog can be worked oldest first without
/// reading all of it.
#[test]
fn stored_requests_page_newest_or_oldest_first() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let mut quarantined = Vec::new();
            for n in 0..7 {
                let status = if n == 3 {
                    InboundStatus::Processed
                } else {
                    InboundStatus::Quarantined
                };
                let request = inbound("a", &format!("k{n}"), status);
                if status == InboundStatus::Quarantined {
                    quarantined.push(request.id);
                }
                store.ingest(write(request, vec![])).await.unwrap();
            }
            for oldest_first in [true, false] {
                let mut seen = Vec::new();
                let mut cursor = None;
                loop {
                    let page = store
                        .inbound_list(InboundQuery {
                            status: Some(InboundStatus::Quarantined),
                            cursor,
                            oldest_first,
                            limit: 4,
                            ..InboundQuery::default()
                        })
                        .await
                        .unwrap();
                    seen.extend(page.items.iter().map(|r| r.id));
                    match page.next_cursor {
                        Some(next) => cursor = Some(next.parse().unwrap()),
                        None => break,
                    }
                }
                let mut expected = quarantined.clone();
                if !oldest_first {
                    expected.reverse();
                }
                assert_eq!(seen, expected, "oldest first: {oldest_first}");
            }
        }
    });
}

#[test]
fn quarantine_and_reprocess() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let quarantined = inbound("cam", "sha256:abc", InboundStatus::Quarantined);
            store
                .ingest(write(quarantined.clone(), vec![]))
                .await
                .unwrap();
            let listed = store
                .inbound_list(InboundQuery {
                    status: Some(InboundStatus::Quarantined),
                    limit: 10,
                    ..InboundQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(listed.items.len(), 1);
            assert_eq!(listed.items[0].error.as_ref().unwrap().code, "invalid_json");
            assert_eq!(
                listed.items[0].body_size,
                Some(quarantined.body.len() as u64)
            );

            let still = store
                .reprocess(
                    quarantined.id,
                    Reprocess::StillFailing(RecordedError {
                        code: "invalid_json".into(),
                        message: "again".into(),
                    }),
                )
                .await
                .unwrap();
            assert_eq!(still, ReprocessOutcome::StillQuarantined);

            let new_event = event("cam", "document.received", "doc_1");
            let new_event_id = new_event.id;
            let done = store
                .reprocess(
                    quarantined.id,
                    Reprocess::Normalized {
                        provider_event: "DOCUMENT.RECEIVED".into(),
                        provider_event_id: None,
                        dedup_key: "DOCUMENT.RECEIVED:doc_1:".into(),
                        body_dedup_key: None,
                        events: vec![new_event],
                        deliveries: Vec::new(),
                        facts: Vec::new(),
                        concluder: None,
                        dedup_expires_at: Timestamp::now().add(Duration::from_secs(3600)),
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                done,
                ReprocessOutcome::Processed {
                    event_ids: vec![new_event_id],
                    concluded: Vec::new(),
                }
            );
            let record = store.inbound(quarantined.id).await.unwrap().unwrap();
            assert_eq!(record.status, InboundStatus::Processed);
            assert_eq!(record.error, None);
            assert_eq!(record.event_ids, vec![new_event_id]);
            assert_eq!(
                store
                    .reprocess(
                        quarantined.id,
                        Reprocess::StillFailing(RecordedError {
                            code: "x".into(),
                            message: "y".into()
                        })
                    )
                    .await
                    .unwrap(),
                ReprocessOutcome::NotQuarantined
            );

            // A second quarantined copy of the same message becomes a duplicate of the first.
            let copy = inbound("cam", "sha256:def", InboundStatus::Quarantined);
            store.ingest(write(copy.clone(), vec![])).await.unwrap();
            let outcome = store
                .reprocess(
                    copy.id,
                    Reprocess::Normalized {
                        provider_event: "DOCUMENT.RECEIVED".into(),
                        provider_event_id: None,
                        dedup_key: "DOCUMENT.RECEIVED:doc_1:".into(),
                        body_dedup_key: None,
                        events: vec![event("cam", "document.received", "doc_1")],
                        deliveries: Vec::new(),
                        facts: Vec::new(),
                        concluder: None,
                        dedup_expires_at: Timestamp::now().add(Duration::from_secs(3600)),
                    },
                )
                .await
                .unwrap();
            assert_eq!(outcome, ReprocessOutcome::DuplicateOf(quarantined.id));
            let copy = store.inbound(copy.id).await.unwrap().unwrap();
            assert_eq!(copy.status, InboundStatus::Duplicate);
            assert!(copy.event_ids.is_empty());
        }
    });
}

fn normalized(dedup_key: &str) -> Reprocess {
    Reprocess::Normalized {
        provider_event: "invoice.paid".into(),
        provider_event_id: Some(dedup_key.into()),
        dedup_key: dedup_key.into(),
        body_dedup_key: None,
        events: vec![event("s", "invoice.paid", "inv_1")],
        deliveries: Vec::new(),
        facts: Vec::new(),
        concluder: None,
        dedup_expires_at: Timestamp::now().add(Duration::from_secs(3600)),
    }
}

/// On PostgreSQL a reprocess the database cancels for a conflict (here: a row lock waited for
/// past `lock_timeout`, as a deadlock with an ingest's ledger locks would be) is written again,
/// as an ingest is, rather than failing the operator's request.
#[test]
fn a_postgres_reprocess_that_conflicts_is_written_again() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let store = Store::open(&config).await.unwrap();
        let DatabaseConfig::Postgres(mut options) = config.clone() else {
            unreachable!("a PostgreSQL configuration")
        };
        options.url.push_str("%20-c%20lock_timeout%3D1000");
        let impatient = Store::open(&DatabaseConfig::Postgres(options))
            .await
            .unwrap();
        let request = inbound("rzp", "held-up", InboundStatus::Quarantined);
        store
            .ingest(write(request.clone(), Vec::new()))
            .await
            .unwrap();
        // Another session holds the request's row for 1.5 s: the first try gives up at 1 s.
        let holder = postgres_session(&config).await;
        holder.batch_execute("BEGIN").await.unwrap();
        holder
            .execute(
                "SELECT 1 FROM inbound WHERE id = $1 FOR UPDATE",
                &[&request.id.to_string()],
            )
            .await
            .unwrap();
        let release = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            holder.batch_execute("COMMIT").await.unwrap();
        };
        let (outcome, ()) = tokio::join!(
            impatient.reprocess(request.id, normalized("held-up")),
            release
        );
        assert!(
            matches!(outcome, Ok(ReprocessOutcome::Processed { .. })),
            "{outcome:?}"
        );
    });
}

/// A quarantined request that holds its body's hash beside the provider's id reprocesses under
/// both, its own claims renewed rather than taken for another request's.
#[test]
fn a_quarantined_request_holding_two_keys_reprocesses_under_them() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let mut held = inbound("s", "event:evt_two", InboundStatus::Quarantined);
            held.body_dedup_key = Some("sha256:two".to_owned());
            store.ingest(write(held.clone(), vec![])).await.unwrap();
            let Reprocess::Normalized { events, .. } = normalized("x") else {
                unreachable!()
            };
            let outcome = store
                .reprocess(
                    held.id,
                    Reprocess::Normalized {
                        provider_event: "invoice.paid".into(),
                        provider_event_id: Some("evt_two".into()),
                        dedup_key: "event:evt_two".into(),
                        body_dedup_key: Some("sha256:two".into()),
                        events,
                        deliveries: Vec::new(),
                        facts: Vec::new(),
                        concluder: None,
                        dedup_expires_at: Timestamp::now().add(Duration::from_secs(3600)),
                    },
                )
                .await
                .unwrap();
            assert!(
                matches!(outcome, ReprocessOutcome::Processed { .. }),
                "{outcome:?}"
            );
            // Both keys are still held: a copy under either is a duplicate.
            for (event_key, body_key) in [
                ("event:evt_other", "sha256:two"),
                ("event:evt_two", "sha256:other"),
            ] {
                let mut copy = inbound("s", event_key, InboundStatus::Processed);
                copy.body_dedup_key = Some(body_key.to_owned());
                let stored = store.ingest(write(copy, vec![])).await.unwrap();
                assert!(
                    matches!(stored, IngestOutcome::Duplicate { .. }),
                    "{event_key}, {body_key}: {stored:?}"
                );
            }
        }
    });
}

#[test]
fn reprocessing_claims_an_unchanged_dedup_key_again() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            // Quarantined while its key was live: reprocessing under the same key processes it.
            let holding = inbound("s", "pay_held", InboundStatus::Quarantined);
            store.ingest(write(holding.clone(), vec![])).await.unwrap();
            assert!(matches!(
                store
                    .reprocess(holding.id, normalized("pay_held"))
                    .await
                    .unwrap(),
                ReprocessOutcome::Processed { .. }
            ));

            // Its key expired in quarantine and a later copy of the message took it: the
            // quarantined request is that copy's duplicate, not a second payment.
            let mut stale = write(
                inbound("s", "pay_copied", InboundStatus::Quarantined),
                vec![],
            );
            stale.dedup_expires_at = Timestamp::now().sub(Duration::from_secs(1));
            let stale_id = stale.inbound.id;
            store.ingest(stale).await.unwrap();
            let copy = inbound("s", "pay_copied", InboundStatus::Processed);
            assert!(matches!(
                store.ingest(write(copy.clone(), vec![])).await.unwrap(),
                IngestOutcome::Stored { .. }
            ));
            assert_eq!(
                store
                    .reprocess(stale_id, normalized("pay_copied"))
                    .await
                    .unwrap(),
                ReprocessOutcome::DuplicateOf(copy.id)
            );
            let record = store.inbound(stale_id).await.unwrap().unwrap();
            assert_eq!(record.status, InboundStatus::Duplicate);
            assert!(record.event_ids.is_empty());

            // Reprocessed, a request is a duplicate under its second key too.
            let mut original = inbound("s", "event:first", InboundStatus::Processed);
            original.body_dedup_key = Some("sha256:body".into());
            store.ingest(write(original.clone(), vec![])).await.unwrap();
            let replayed = inbound("s", "event:replayed", InboundStatus::Quarantined);
            store.ingest(write(replayed.clone(), vec![])).await.unwrap();
            let mut again = normalized("event:replayed");
            if let Reprocess::Normalized { body_dedup_key, .. } = &mut again {
                *body_dedup_key = Some("sha256:body".into());
            }
            assert_eq!(
                store.reprocess(replayed.id, again).await.unwrap(),
                ReprocessOutcome::DuplicateOf(original.id)
            );
            // and gives up the key it held, which names no message stored.
            let reusing = inbound("s", "event:replayed", InboundStatus::Processed);
            assert!(matches!(
                store.ingest(write(reusing, vec![])).await.unwrap(),
                IngestOutcome::Stored { .. }
            ));

            // Quarantined under its body's hash (no event id then), reprocessed under an event
            // id and that hash: the hash stays claimed.
            let hashed = inbound("s", "sha256:kept", InboundStatus::Quarantined);
            store.ingest(write(hashed.clone(), vec![])).await.unwrap();
            let mut named = normalized("event:named");
            if let Reprocess::Normalized { body_dedup_key, .. } = &mut named {
                *body_dedup_key = Some("sha256:kept".into());
            }
            assert!(matches!(
                store.reprocess(hashed.id, named).await.unwrap(),
                ReprocessOutcome::Processed { .. }
            ));
            let mut copy = inbound("s", "event:other", InboundStatus::Processed);
            copy.body_dedup_key = Some("sha256:kept".into());
            assert_eq!(
                store.ingest(write(copy, vec![])).await.unwrap(),
                IngestOutcome::Duplicate {
                    inbound_id: hashed.id,
                    event_ids: store.inbound(hashed.id).await.unwrap().unwrap().event_ids,
                }
            );
        }
    });
}

#[test]
fn concurrent_writes_share_commits_and_one_failure_spares_the_rest() {
    runtime().block_on(async {
        for test in backends().await {
            let store = test.store.clone();
            let duplicate_event = event("s", "invoice.paid", "inv");
            store
                .ingest(write(
                    inbound("s", "first", InboundStatus::Processed),
                    vec![duplicate_event.clone()],
                ))
                .await
                .unwrap();
            let mut tasks = Vec::new();
            for n in 0..200 {
                let store = store.clone();
                let reused = duplicate_event.clone();
                tasks.push(tokio::spawn(async move {
                    // Every tenth write reuses an event id: its own transaction part fails.
                    let events = if n % 10 == 0 {
                        vec![reused]
                    } else {
                        vec![event("s", "invoice.paid", "inv")]
                    };
                    store
                        .ingest(write(
                            inbound("s", &format!("k{n}"), InboundStatus::Processed),
                            events,
                        ))
                        .await
                }));
            }
            let mut failed = 0;
            for task in tasks {
                if task.await.unwrap().is_err() {
                    failed += 1;
                }
            }
            assert_eq!(failed, 20);
            let all = store
                .events(EventQuery {
                    after: None,
                    limit: 500,
                    ..EventQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(all.items.len(), 1 + 180);
            let stored = store
                .inbound_list(InboundQuery {
                    limit: 500,
                    ..InboundQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(
                stored.items.len(),
                1 + 180,
                "a failed write left nothing behind"
            );
        }
    });
}

/// Instances hear each other's changes whatever their schema is called: a name with capitals
/// and a dash, and one too long to fit in a channel name as it is.
#[test]
fn notifications_reach_other_instances_in_any_schema() {
    runtime().block_on(async {
        for suffix in [
            "_With-Capitals",
            "_and_a_name_too_long_for_a_channel_as_it_is",
        ] {
            let (config, _dir) = postgres_config_named(suffix).await;
            let listening = Store::open(&config).await.unwrap();
            let mut notifications = listening.subscribe().expect("PostgreSQL notifies");
            let mut next = async || {
                tokio::time::timeout(Duration::from_secs(5), notifications.recv())
                    .await
                    .ok()
                    .flatten()
            };
            assert_eq!(next().await, Some(Notification::Reconnected), "{suffix}");
            let other = Store::open(&config).await.unwrap();
            other
                .create_endpoint(new_endpoint("canonical", None))
                .await
                .unwrap();
            assert_eq!(next().await, Some(Notification::Endpoints), "{suffix}");
            other.close().await;
            listening.close().await;
        }
    });
}

/// A change to an endpoint that another instance is deleting at the same moment finds it gone
/// and writes nothing to the deleted row.
#[test]
fn a_change_racing_a_deletion_finds_the_endpoint_gone() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let store = Store::open(&config).await.unwrap();
        let endpoint = store
            .create_endpoint(new_endpoint("canonical", None))
            .await
            .unwrap();
        let mut deleting = postgres_session(&config).await;
        let deletion = deleting.transaction().await.unwrap();
        deletion
            .execute(
                "UPDATE endpoints SET deleted_at = 1, enabled = FALSE WHERE id = $1",
                &[&endpoint.id.to_string()],
            )
            .await
            .unwrap();
        let changing = {
            let store = store.clone();
            let patch = EndpointPatch {
                url: Some("https://elsewhere.example.com/hooks".to_owned()),
                enabled: Some(true),
                ..EndpointPatch::default()
            };
            tokio::spawn(async move {
                store
                    .update_endpoint(endpoint.id, patch, Timestamp::now())
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!changing.is_finished(), "the change waits for the deletion");
        deletion.commit().await.unwrap();
        let changed = changing.await.unwrap().unwrap();
        assert!(changed.is_none(), "{changed:?}");
        let row = deleting
            .query_one(
                "SELECT url, enabled FROM endpoints WHERE id = $1",
                &[&endpoint.id.to_string()],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), endpoint.url);
        assert!(
            !row.get::<_, bool>(1),
            "the deleted endpoint stays disabled"
        );
    });
}

/// PostgreSQL cancels one of two transactions that lock rows in opposite orders. An ingest so
/// cancelled wrote nothing and is written again: its caller sees it stored, once. One the
/// database keeps cancelling fails as a conflict (a 503 to the provider, who retries), still
/// having written nothing.
#[test]
fn an_ingest_the_database_cancels_for_a_conflict_is_written_again() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let store = Store::open(&config).await.unwrap();
        // The database cancels the first `cancelled.attempts` inserts of a request, as it
        // cancels one side of a deadlock; the sequence counts attempts across rollbacks.
        let session = postgres_session(&config).await;
        session
            .batch_execute(
                "CREATE TABLE cancelled (attempts BIGINT NOT NULL);
                 INSERT INTO cancelled VALUES (2);
                 CREATE SEQUENCE attempted;
                 CREATE FUNCTION cancel_as_a_deadlock() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     IF nextval('attempted') <= (SELECT attempts FROM cancelled) THEN
                         RAISE EXCEPTION 'deadlock detected' USING ERRCODE = 'deadlock_detected';
                     END IF;
                     RETURN NEW;
                 END $$;
                 CREATE TRIGGER cancel_as_a_deadlock BEFORE INSERT ON inbound
                     FOR EACH ROW EXECUTE FUNCTION cancel_as_a_deadlock();",
            )
            .await
            .unwrap();
        let attempts = || async {
            let row = session
                .query_one("SELECT last_value FROM attempted", &[])
                .await
                .unwrap();
            row.get::<_, i64>(0)
        };

        let request = inbound("rzp", "pay_conflicted", InboundStatus::Processed);
        let payment = event("rzp", "payment.captured", "pay_conflicted");
        let stored = store
            .ingest(write(request.clone(), vec![payment.clone()]))
            .await
            .unwrap();
        assert_eq!(
            stored,
            IngestOutcome::Stored {
                inbound_id: request.id,
                event_ids: vec![payment.id],
                concluded: Vec::new(),
            }
        );
        assert_eq!(
            attempts().await,
            3,
            "two cancelled attempts, then the one stored"
        );
        assert_eq!(newest_hundred_events(&store).await.items.len(), 1);

        session
            .batch_execute("UPDATE cancelled SET attempts = 1000; ALTER SEQUENCE attempted RESTART")
            .await
            .unwrap();
        let refused = inbound("rzp", "pay_refused", InboundStatus::Processed);
        let error = store
            .ingest(write(
                refused.clone(),
                vec![event("rzp", "payment.captured", "pay_refused")],
            ))
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
        assert_eq!(attempts().await, 3, "the first attempt and two more");
        assert!(store.inbound(refused.id).await.unwrap().is_none());
        assert_eq!(newest_hundred_events(&store).await.items.len(), 1);
        store.close().await;
    });
}

/// Copies of one message arriving together (a provider's retry racing the original) may land
/// in one group of writes: each key is stored once, and every copy answers with what was.
#[test]
fn copies_of_a_message_arriving_together_are_stored_once() {
    runtime().block_on(async {
        for test in backends().await {
            let store = test.store.clone();
            let mut tasks = Vec::new();
            for copy in 0..5 {
                for key in 0..20 {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        let outcome = store
                            .ingest(write(
                                inbound("s", &format!("k{key}"), InboundStatus::Processed),
                                vec![event("s", "invoice.paid", &format!("inv{key}"))],
                            ))
                            .await
                            .unwrap();
                        (key, copy, outcome)
                    }));
                }
            }
            let mut stored = std::collections::HashMap::new();
            let mut duplicates = Vec::new();
            for task in tasks {
                match task.await.unwrap() {
                    (
                        key,
                        _,
                        IngestOutcome::Stored {
                            inbound_id,
                            event_ids,
                            ..
                        },
                    ) => {
                        assert!(
                            stored.insert(key, (inbound_id, event_ids)).is_none(),
                            "key {key} stored twice"
                        );
                    }
                    (
                        key,
                        _,
                        IngestOutcome::Duplicate {
                            inbound_id,
                            event_ids,
                        },
                    ) => duplicates.push((key, inbound_id, event_ids)),
                }
            }
            assert_eq!(stored.len(), 20);
            assert_eq!(duplicates.len(), 80);
            for (key, inbound_id, event_ids) in duplicates {
                assert_eq!(
                    (inbound_id, event_ids),
                    stored[&key],
                    "a copy of key {key} names the stored original"
                );
            }
            let listed = store
                .inbound_list(InboundQuery {
                    limit: 500,
                    ..InboundQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(listed.items.len(), 20, "copies leave no request behind");
        }
    });
}

/// A clean stop (`close`) writes and answers every ingest already waiting to be written, so
/// requests in flight at shutdown are acknowledged rather than refused.
#[test]
fn closing_writes_the_ingests_already_queued() {
    runtime().block_on(async {
        for test in backends().await {
            // On PostgreSQL another session holds the writes back, so they are still queued
            // when the store closes (SQLite's writer is too quick to catch them queued).
            let blocker = match &test.config {
                DatabaseConfig::Postgres(_) => {
                    let session = postgres_session(&test.config).await;
                    session
                        .batch_execute("BEGIN; LOCK TABLE dedup IN EXCLUSIVE MODE")
                        .await
                        .unwrap();
                    Some(session)
                }
                DatabaseConfig::Sqlite { .. } => None,
            };
            let store = test.store.clone();
            let tasks: Vec<_> = (0..60)
                .map(|n| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        store
                            .ingest(write(
                                inbound("s", &format!("queued{n}"), InboundStatus::Processed),
                                vec![event("s", "invoice.paid", "inv")],
                            ))
                            .await
                    })
                })
                .collect();
            // Long enough for every task to reach the queue.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let closing = tokio::spawn({
                let store = test.store.clone();
                async move { store.close().await }
            });
            if let Some(blocker) = blocker {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(!closing.is_finished(), "closed with writes still queued");
                blocker.batch_execute("COMMIT").await.unwrap();
            }
            closing.await.unwrap();
            for task in tasks {
                assert!(matches!(
                    task.await.unwrap(),
                    Ok(IngestOutcome::Stored { .. })
                ));
            }
            let reopened = Store::open(&test.config).await.unwrap();
            let listed = reopened
                .inbound_list(InboundQuery {
                    limit: 500,
                    ..InboundQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(listed.items.len(), 60);
        }
    });
}

#[test]
fn data_survives_reopening_and_writes_after_close_fail() {
    runtime().block_on(async {
        for test in backends().await {
            let request = inbound("s", "persist", InboundStatus::Processed);
            let e = event("s", "invoice.paid", "inv_9");
            test.store
                .ingest(write(request.clone(), vec![e.clone()]))
                .await
                .unwrap();
            test.store.close().await;
            assert!(matches!(
                test.store
                    .ingest(write(
                        inbound("s", "late", InboundStatus::Processed),
                        vec![]
                    ))
                    .await,
                Err(StoreError::Unavailable(_))
            ));
            let reopened = Store::open(&test.config).await.unwrap();
            assert_eq!(
                reopened.event(e.id).await.unwrap().unwrap().payload,
                e.payload
            );
            assert_eq!(
                reopened.schema_version().await.unwrap(),
                Store::latest_version(&test.config)
            );
            reopened.ping().await.unwrap();
        }
    });
}

fn new_endpoint(format: &str, name: Option<&str>) -> NewEndpoint {
    NewEndpoint {
        id: EndpointId::new(),
        name: name.map(str::to_owned),
        url: "https://hooks.example.com/billhook".to_owned(),
        description: "ledger service".to_owned(),
        event_types: vec!["invoice.*".to_owned()],
        sources: None,
        format: format.to_owned(),
        headers: vec![("x-team".to_owned(), "payments".to_owned())],
        rate_limit: Some(10),
        max_concurrency: None,
        enabled: true,
        secret: "whsec_first".to_owned(),
        now: Timestamp::now(),
    }
}

fn delivery_for(
    endpoint: &EndpointRecord,
    event: Option<&NewEvent>,
    inbound: InboundId,
) -> NewDelivery {
    NewDelivery {
        id: DeliveryId::new(),
        endpoint_id: endpoint.id,
        message_id: event.map_or(inbound.to_string(), |e| e.id.to_string()),
        event_id: event.map(|e| e.id),
        event_type: "invoice.paid",
        status: DeliveryStatus::Pending,
        next_attempt_at: Timestamp::now(),
        lease: None,
    }
}

/// A first attempt that the endpoint answered `200 ok`.
fn delivered_ok(delivery: DeliveryId, endpoint: EndpointId, now: Timestamp) -> Completion {
    Completion {
        delivery_id: delivery,
        endpoint_id: endpoint,
        attempt: Some(NewAttempt {
            id: AttemptId::new(),
            number: 1,
            started_at: now,
            duration_ms: 3,
            status_code: Some(200),
            response_body: Some(Bytes::from_static(b"ok")),
            error_kind: None,
            error_message: None,
        }),
        next: NextStep::Delivered,
        disable_endpoint: None,
    }
}

#[test]
fn endpoints_are_created_patched_rotated_and_deleted() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let created = canonical_endpoint(store).await;
            assert_eq!(created.secrets.len(), 1);
            assert_eq!(
                created.headers,
                vec![("x-team".to_owned(), "payments".to_owned())]
            );
            let now = Timestamp::now();
            let rotated = store
                .rotate_secret(
                    created.id,
                    "whsec_second".into(),
                    now,
                    now.add(Duration::from_secs(86_400)),
                )
                .await
                .unwrap()
                .unwrap();
            assert_eq!(rotated.secrets[0].secret, "whsec_second");
            assert_eq!(rotated.secrets[0].expires_at, None);
            assert_eq!(rotated.secrets[1].secret, "whsec_first");
            assert!(rotated.secrets[1].expires_at.is_some());

            let patched = store
                .update_endpoint(
                    created.id,
                    EndpointPatch {
                        url: Some("https://hooks.example.com/v2".into()),
                        sources: Some(Some(vec!["razorpay".into()])),
                        rate_limit: Some(None),
                        enabled: Some(false),
                        disabled_reason: Some("maintenance".into()),
                        ..EndpointPatch::default()
                    },
                    Timestamp::now(),
                )
                .await
                .unwrap()
                .unwrap();
            assert_eq!(patched.url, "https://hooks.example.com/v2");
            assert_eq!(patched.sources, Some(vec!["razorpay".to_owned()]));
            assert_eq!(patched.rate_limit, None);
            assert!(!patched.enabled);
            assert_eq!(patched.disabled_reason.as_deref(), Some("maintenance"));

            let listed = store.endpoints(None, 10).await.unwrap();
            assert_eq!(listed.items.len(), 1);
            assert!(
                store
                    .delete_endpoint(created.id, Timestamp::now())
                    .await
                    .unwrap()
            );
            assert!(store.endpoint(created.id).await.unwrap().is_none());
            assert!(
                !store
                    .delete_endpoint(created.id, Timestamp::now())
                    .await
                    .unwrap()
            );
            assert!(store.all_endpoints().await.unwrap().is_empty());
        }
    });
}

#[test]
fn named_endpoints_keep_their_id_and_secret_across_upserts() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let first = store
                .upsert_named_endpoint(new_endpoint("canonical", Some("ledger")), None)
                .await
                .unwrap();
            let mut changed = new_endpoint("raw", Some("ledger"));
            changed.secret = "whsec_ignored".into();
            changed.url = "https://elsewhere.example.com/".into();
            let second = store.upsert_named_endpoint(changed, None).await.unwrap();
            assert_eq!(second.id, first.id);
            assert_eq!(second.format, "raw");
            assert_eq!(second.url, "https://elsewhere.example.com/");
            assert_eq!(second.secrets[0].secret, "whsec_first");
            let mut configured = new_endpoint("raw", Some("ledger"));
            configured.secret = "whsec_from_config".into();
            let overlap_until = Timestamp::now().add(Duration::from_secs(86_400));
            let third = store
                .upsert_named_endpoint(configured.clone(), Some(overlap_until))
                .await
                .unwrap();
            assert_eq!(third.secrets[0].secret, "whsec_from_config");
            // The secret it replaced keeps signing, as after a rotation through the API, so a
            // receiver not yet given the new one still verifies.
            assert_eq!(third.secrets.len(), 2, "{:?}", third.secrets);
            assert_eq!(third.secrets[1].secret, "whsec_first");
            assert_eq!(third.secrets[1].expires_at, Some(overlap_until));
            // The same configured secret at the next start changes nothing.
            let later = Timestamp::now().add(Duration::from_secs(3600));
            let fourth = store
                .upsert_named_endpoint(configured, Some(later))
                .await
                .unwrap();
            assert_eq!(fourth.secrets, third.secrets);

            // Deleted through the API while still declared: the next start creates it anew.
            assert!(
                store
                    .delete_endpoint(third.id, Timestamp::now())
                    .await
                    .unwrap()
            );
            let recreated = store
                .upsert_named_endpoint(new_endpoint("canonical", Some("ledger")), None)
                .await
                .unwrap();
            assert_ne!(recreated.id, third.id);
            assert_eq!(recreated.name.as_deref(), Some("ledger"));
            assert!(store.endpoint(third.id).await.unwrap().is_none());
        }
    });
}

/// PostgreSQL: an instance starting while an operator deletes its declared endpoint through the
/// API (the delete committing while the start waits for the row) declares it anew instead of
/// updating the deleted row and failing the start.
#[test]
fn a_declared_endpoint_deleted_during_the_start_is_declared_anew() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let store = Store::open(&config).await.unwrap();
        let first = store
            .upsert_named_endpoint(new_endpoint("canonical", Some("ledger")), None)
            .await
            .unwrap();
        let mut operator = postgres_session(&config).await;
        let deleting = operator.transaction().await.unwrap();
        deleting
            .execute(
                "UPDATE endpoints SET deleted_at = 1, enabled = FALSE, name = NULL WHERE id = $1",
                &[&first.id.to_string()],
            )
            .await
            .unwrap();
        let starting = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .upsert_named_endpoint(new_endpoint("canonical", Some("ledger")), None)
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        deleting.commit().await.unwrap();
        let declared = starting.await.unwrap().expect("the start goes on");
        assert_ne!(declared.id, first.id, "declared anew");
        assert_eq!(declared.name.as_deref(), Some("ledger"));
    });
}

#[test]
fn deliveries_are_claimed_under_lease_with_their_payloads() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let canonical = canonical_endpoint(store).await;
            let raw = store
                .create_endpoint(new_endpoint("raw", None))
                .await
                .unwrap();
            let request = inbound("rzp", "claim-1", InboundStatus::Processed);
            let e = event("rzp", "invoice.paid", "inv_1");
            let mut write = write(request.clone(), vec![e.clone()]);
            write.deliveries = vec![
                delivery_for(&canonical, Some(&e), request.id),
                delivery_for(&raw, None, request.id),
            ];
            store.ingest(write).await.unwrap();

            let now = Timestamp::now();
            let (due, _) = store.due_endpoints(now).await.unwrap();
            assert_eq!(due.len(), 2);
            let lease = now.add(LONG_LEASE);
            let claimed = store
                .claim_due(canonical.id, "worker-a", now, lease, 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
            assert_eq!(claimed[0].payload.as_ref(), Some(&e.payload));
            assert_eq!(claimed[0].raw, None);
            assert!(
                store
                    .claim_due(canonical.id, "worker-b", now, lease, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // After the lease expires, another worker may take it.
            lapse_lease(&test.config, claimed[0].id).await;
            let later = Timestamp::now();
            let reclaimed = store
                .claim_due(
                    canonical.id,
                    "worker-b",
                    later,
                    later.add(Duration::from_secs(30)),
                    10,
                )
                .await
                .unwrap();
            assert_eq!(reclaimed.len(), 1);

            let raw_claim = store
                .claim_due(raw.id, "worker-a", now, lease, 10)
                .await
                .unwrap();
            assert_eq!(raw_claim[0].payload.as_deref(), Some(&request.body[..]));
            assert_eq!(raw_claim[0].message_id, request.id.to_string());
            assert_eq!(
                raw_claim[0].raw.as_ref().unwrap().provider_event.as_deref(),
                Some("invoice.paid")
            );
        }
    });
}

/// An attempt whose endpoint was deleted while it was out, and whose delivery the deletion
/// passed over (PostgreSQL's batch skips rows locked at that moment), ends cancelled rather
/// than retried or held: held, it would wait for a recovery that can never come.
#[test]
fn an_attempt_finished_after_its_endpoint_was_deleted_ends_cancelled() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let request = inbound("rzp", "deleted-during-attempt", InboundStatus::Processed);
            let mut ingest = write(request.clone(), Vec::new());
            ingest.deliveries = vec![delivery_for(&endpoint, None, request.id)];
            store.ingest(ingest).await.unwrap();
            let now = Timestamp::now();
            let claimed = claim_for_w(store, endpoint.id, now).await;
            assert_eq!(claimed.len(), 1);
            assert!(store.delete_endpoint(endpoint.id, now).await.unwrap());
            execute_directly(
                &test.config,
                "UPDATE deliveries SET status = 'pending' WHERE endpoint_id = $1",
                &endpoint.id.to_string(),
            )
            .await;
            store
                .complete(
                    vec![Completion {
                        delivery_id: claimed[0].id,
                        endpoint_id: endpoint.id,
                        attempt: None,
                        next: NextStep::Retry {
                            at: now.add(Duration::from_secs(5)),
                        },
                        disable_endpoint: None,
                    }],
                    "w",
                    now,
                )
                .await
                .unwrap();
            let record = store.delivery(claimed[0].id).await.unwrap().unwrap();
            assert_eq!(
                record.status,
                DeliveryStatus::Cancelled,
                "{:?}",
                test.config
            );
        }
    });
}

/// The poller's question, asked endpoint by endpoint: an endpoint owed only later is not due
/// and says when; one with a delivery due and unleased is; a deleted one is due while it still
/// owes anything (for the poller to cancel it), and is found at start however long ago it was
/// deleted.
#[test]
fn due_endpoints_are_asked_endpoint_by_endpoint() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let now = Timestamp::now();
            let later = now.add(Duration::from_secs(3600));
            let soon = now.add(Duration::from_secs(60));
            let waiting = store
                .create_endpoint(new_endpoint("raw", None))
                .await
                .unwrap();
            let ready = store
                .create_endpoint(new_endpoint("raw", None))
                .await
                .unwrap();
            let gone = store
                .create_endpoint(new_endpoint("raw", None))
                .await
                .unwrap();
            let request = inbound("rzp", "due-by-endpoint", InboundStatus::Processed);
            let mut ingest = write(request.clone(), Vec::new());
            let planned = |endpoint: &EndpointRecord, at: Timestamp| NewDelivery {
                next_attempt_at: at,
                ..delivery_for(endpoint, None, request.id)
            };
            ingest.deliveries = vec![
                planned(&waiting, later),
                planned(&waiting, soon),
                planned(&ready, now),
                planned(&ready, later),
                planned(&gone, later),
            ];
            store.ingest(ingest).await.unwrap();
            assert_eq!(
                store.due_endpoints(now).await.unwrap(),
                (vec![ready.id], Some(soon)),
                "{:?}",
                test.config
            );
            assert!(store.deleted_endpoints_owing().await.unwrap().is_empty());

            // Deleted with its deliveries left owed (a cancelling cut short, played here by
            // setting one back behind the store's back).
            assert!(store.delete_endpoint(gone.id, now).await.unwrap());
            execute_directly(
                &test.config,
                "UPDATE deliveries SET status = 'pending' WHERE endpoint_id = $1",
                &gone.id.to_string(),
            )
            .await;
            let (mut due, _) = store.due_endpoints(now).await.unwrap();
            due.sort();
            let mut expected = vec![ready.id, gone.id];
            expected.sort();
            assert_eq!(due, expected, "{:?}", test.config);
            assert_eq!(
                store.deleted_endpoints_owing().await.unwrap(),
                vec![gone.id]
            );
            // An hour on, the poller no longer asks after it; a start still finds it.
            let (due, _) = store
                .due_endpoints(now.add(DELETED_ENDPOINTS_WATCHED_FOR + Duration::from_secs(1)))
                .await
                .unwrap();
            assert!(!due.contains(&gone.id));
            assert_eq!(
                store.deleted_endpoints_owing().await.unwrap(),
                vec![gone.id]
            );
            store
                .cancel_deliveries_of_deleted(vec![gone.id], now)
                .await
                .unwrap();
            assert!(store.deleted_endpoints_owing().await.unwrap().is_empty());
        }
    });
}

/// An endpoint's backlog longer than a batch is held, cancelled and recovered a batch at a
/// time: a disabling or a deletion changes only the first batch and the calls after it the
/// rest, and a recovery walks the whole backlog in transactions of a batch each.
#[test]
fn long_backlogs_change_a_batch_at_a_time() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let request = inbound("rzp", "backlog-1", InboundStatus::Processed);
            let batch = u64::from(BACKLOG_BATCH);
            let total = 2 * batch + 5;
            let since = Timestamp::now().sub(Duration::from_secs(1));
            let mut ingest = write(request.clone(), Vec::new());
            ingest.deliveries = (0..total)
                .map(|_| NewDelivery {
                    next_attempt_at: Timestamp::now().add(Duration::from_secs(3600)),
                    ..delivery_for(&endpoint, None, request.id)
                })
                .collect();
            store.ingest(ingest).await.unwrap();
            let counts = || async {
                let stats = store
                    .endpoint_stats(endpoint.id, Timestamp::now())
                    .await
                    .unwrap();
                (stats.pending, stats.held)
            };
            let switch = |enabled: bool| {
                store.update_endpoint(
                    endpoint.id,
                    EndpointPatch {
                        enabled: Some(enabled),
                        ..EndpointPatch::default()
                    },
                    Timestamp::now(),
                )
            };
            let hold = || store.hold_deliveries_of_disabled(vec![endpoint.id], Timestamp::now());

            switch(false).await.unwrap();
            assert_eq!(counts().await, (total - batch, batch), "{:?}", test.config);
            assert_eq!(hold().await.unwrap(), batch);
            assert_eq!(hold().await.unwrap(), 5);
            assert_eq!(hold().await.unwrap(), 0);
            assert_eq!(counts().await, (0, total));

            switch(true).await.unwrap();
            let recovered = store
                .recover(endpoint.id, since, Timestamp::now())
                .await
                .unwrap()
                .resent;
            assert_eq!(recovered, total, "{:?}", test.config);
            assert_eq!(counts().await, (total, 0));

            // Disabled (a batch held), then deleted (a batch of the pending cancelled).
            switch(false).await.unwrap();
            assert!(
                store
                    .delete_endpoint(endpoint.id, Timestamp::now())
                    .await
                    .unwrap()
            );
            assert_eq!(counts().await, (5, batch), "{:?}", test.config);
            let cancel = || store.cancel_deliveries_of_deleted(vec![endpoint.id], Timestamp::now());
            assert_eq!(cancel().await.unwrap(), 5);
            assert_eq!(cancel().await.unwrap(), 0);
            // Held ones are not owed, but a start still finds a deletion that left them.
            assert_eq!(
                store.deleted_endpoints_owing().await.unwrap(),
                vec![endpoint.id]
            );
            let cancel_held = || store.cancel_held_of_deleted(endpoint.id, Timestamp::now());
            assert_eq!(cancel_held().await.unwrap(), batch);
            assert_eq!(cancel_held().await.unwrap(), 0);
            assert_eq!(counts().await, (0, 0), "{:?}", test.config);
            assert!(store.deleted_endpoints_owing().await.unwrap().is_empty());
        }
    });
}

#[test]
fn completions_record_attempts_schedule_retries_and_disable_endpoints() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let request = inbound("rzp", "complete-1", InboundStatus::Processed);
            let events: Vec<NewEvent> = (0..3)
                .map(|n| event("rzp", "invoice.paid", &format!("inv_{n}")))
                .collect();
            let mut ingest = write(request.clone(), events.clone());
            ingest.deliveries = events
                .iter()
                .map(|e| delivery_for(&endpoint, Some(e), request.id))
                .collect();
            let delivery_ids: Vec<_> = ingest.deliveries.iter().map(|d| d.id).collect();
            store.ingest(ingest).await.unwrap();
            let now = Timestamp::now();
            let claimed = claim_for_w(store, endpoint.id, now).await;
            assert_eq!(claimed.len(), 3);

            let attempt = |status: u16| NewAttempt {
                id: AttemptId::new(),
                number: 1,
                started_at: now,
                duration_ms: 12,
                status_code: Some(status),
                response_body: Some(Bytes::from_static(b"busy")),
                error_kind: None,
                error_message: None,
            };
            let retry_at = now.add(Duration::from_secs(5));
            store
                .complete(
                    vec![
                        Completion {
                            delivery_id: delivery_ids[0],
                            endpoint_id: endpoint.id,
                            attempt: Some(attempt(200)),
                            next: NextStep::Delivered,
                            disable_endpoint: None,
                        },
                        Completion {
                            delivery_id: delivery_ids[1],
                            endpoint_id: endpoint.id,
                            attempt: Some(attempt(503)),
                            next: NextStep::Retry { at: retry_at },
                            disable_endpoint: None,
                        },
                        Completion {
                            delivery_id: delivery_ids[2],
                            endpoint_id: endpoint.id,
                            attempt: None,
                            next: NextStep::Released,
                            disable_endpoint: None,
                        },
                    ],
                    "w",
                    now,
                )
                .await
                .unwrap();
            let first = store.delivery(delivery_ids[0]).await.unwrap().unwrap();
            assert_eq!(
                (first.status, first.attempts, first.last_status_code),
                (DeliveryStatus::Delivered, 1, Some(200))
            );
            let second = store.delivery(delivery_ids[1]).await.unwrap().unwrap();
            assert_eq!(
                (second.status, second.attempts, second.next_attempt_at),
                (DeliveryStatus::Failed, 1, retry_at)
            );
            let third = store.delivery(delivery_ids[2]).await.unwrap().unwrap();
            assert_eq!((third.status, third.attempts), (DeliveryStatus::Pending, 0));
            let endpoint_now = store.endpoint(endpoint.id).await.unwrap().unwrap();
            assert_eq!(endpoint_now.failing_since, Some(now));
            assert_eq!(endpoint_now.last_error.as_deref(), Some("HTTP 503"));
            // The released delivery is due again; once it is claimed, the endpoint is next due
            // with the retry (its lease ends later).
            let (due, _) = store.due_endpoints(now).await.unwrap();
            assert_eq!(due, vec![endpoint.id]);
            let reclaimed = claim_for_w(store, endpoint.id, now).await;
            assert_eq!(reclaimed.len(), 1);
            assert_eq!(
                store.due_endpoints(now).await.unwrap(),
                (Vec::new(), Some(retry_at))
            );

            let attempts = store
                .attempts_of_endpoint(endpoint.id, None, 10)
                .await
                .unwrap();
            assert_eq!(attempts.items.len(), 2);
            let history = store
                .deliveries_of_event(events[1].id, request.id)
                .await
                .unwrap();
            assert_eq!(history.len(), 1);
            assert_eq!(history[0].1[0].response_body.as_deref(), Some(&b"busy"[..]));

            // A 410 for the one claimed again: the endpoint is disabled and its other
            // deliveries are held.
            let claimed = reclaimed;
            store
                .complete(
                    vec![Completion {
                        delivery_id: claimed[0].id,
                        endpoint_id: endpoint.id,
                        attempt: Some(attempt(410)),
                        next: NextStep::Held,
                        disable_endpoint: Some("the endpoint answered 410 Gone".into()),
                    }],
                    "w",
                    now,
                )
                .await
                .unwrap();
            let disabled = store.endpoint(endpoint.id).await.unwrap().unwrap();
            assert!(!disabled.enabled);
            assert_eq!(
                store
                    .delivery(delivery_ids[1])
                    .await
                    .unwrap()
                    .unwrap()
                    .status,
                DeliveryStatus::Held
            );
            let stats = store.endpoint_stats(endpoint.id, now).await.unwrap();
            assert_eq!(
                (
                    stats.delivered,
                    stats.held,
                    stats.attempts_24h,
                    stats.successes_24h
                ),
                (1, 2, 3, 1)
            );

            // Recovering after a fix resends everything held since then.
            store
                .update_endpoint(
                    endpoint.id,
                    EndpointPatch {
                        enabled: Some(true),
                        ..EndpointPatch::default()
                    },
                    now,
                )
                .await
                .unwrap();
            let recovered = store
                .recover(endpoint.id, now.sub(Duration::from_secs(60)), now)
                .await
                .unwrap()
                .resent;
            assert_eq!(recovered, 2);
            assert_eq!(claim_for_w(store, endpoint.id, now).await.len(), 2);

            // Redelivering a delivered event resends it.
            let redelivered = store
                .redeliver(events[0].id, None, vec![], Timestamp::now())
                .await
                .unwrap();
            assert_eq!(redelivered, vec![delivery_ids[0]]);
            let again = store.delivery(delivery_ids[0]).await.unwrap().unwrap();
            assert_eq!(again.status, DeliveryStatus::Pending);
            assert_eq!(again.attempts, 0, "the retry schedule starts afresh");
        }
    });
}

/// A redelivery leaves a delivery under a live lease to its attempt, whose outcome decides
/// it, but takes one whose lease lapsed (its holder gone) like any other.
#[test]
fn a_redelivery_takes_a_delivery_whose_lease_lapsed() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let owed = ingest_owed(store, &endpoint, "redeliver-lapsed").await;
            let now = Timestamp::now();
            let lease = Duration::from_secs(30);
            store
                .claim_due(endpoint.id, "w", now, now.add(lease), 10)
                .await
                .unwrap();
            store
                .complete(vec![failed_503(owed.delivery, endpoint.id, now)], "w", now)
                .await
                .unwrap();
            assert_eq!(
                store
                    .delivery(owed.delivery)
                    .await
                    .unwrap()
                    .unwrap()
                    .attempts,
                1
            );
            let claimed = store
                .claim_due(endpoint.id, "gone", now, now.add(lease), 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
            let during = store
                .redeliver(owed.event.id, None, vec![], now)
                .await
                .unwrap();
            assert!(during.is_empty(), "an attempt under a live lease decides");
            lapse_lease(&test.config, owed.delivery).await;
            let after = Timestamp::now();
            let redelivered = store
                .redeliver(owed.event.id, None, vec![], after)
                .await
                .unwrap();
            assert_eq!(redelivered, vec![owed.delivery]);
            let record = store.delivery(owed.delivery).await.unwrap().unwrap();
            assert_eq!(record.status, DeliveryStatus::Pending);
            assert_eq!(record.attempts, 0, "the retry schedule starts afresh");
        }
    });
}

/// Instances sharing a PostgreSQL database may disagree about the time, so leases and
/// endpoint ownership are judged by the database's clock: an instance whose clock runs ahead
/// does not take them early nor find them lapsed when it renews them, and a lease given by one
/// whose clock runs behind lasts as long as it asked, not already lapsed.
#[test]
fn postgres_judges_leases_and_ownership_by_its_own_clock() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let store = Store::open(&config).await.unwrap();
        let endpoint = canonical_endpoint(&store).await;
        let first = ingest_owed(&store, &endpoint, "leased-on-time")
            .await
            .delivery;
        let now = Timestamp::now();
        let ahead = now.add(Duration::from_secs(120));
        let behind = now.sub(Duration::from_secs(120));

        let claimed = store
            .claim_due(endpoint.id, "punctual", now, now.add(LONG_LEASE), 10)
            .await
            .unwrap();
        assert_eq!(ids(&claimed), [first]);
        let (due, next) = store.due_endpoints(ahead).await.unwrap();
        assert!(!due.contains(&endpoint.id), "the lease is live");
        let next = next.expect("the lease's end").unix_millis() - ahead.unix_millis();
        assert!(
            (20_000..=30_000).contains(&next),
            "the lease's end, told on the caller's clock: {next} ms from its now"
        );
        let stolen = store
            .claim_due(endpoint.id, "ahead", ahead, ahead.add(LONG_LEASE), 10)
            .await
            .unwrap();
        assert!(stolen.is_empty(), "{:?}", ids(&stolen));
        let renewed = store
            .renew_leases("punctual", vec![first], ahead, ahead.add(LONG_LEASE))
            .await
            .unwrap();
        assert_eq!(renewed, [first], "live, whatever the renewing clock says");

        let owned = store
            .own_endpoints("punctual", vec![endpoint.id], now, now.add(LONG_LEASE))
            .await
            .unwrap();
        assert_eq!(owned, [endpoint.id]);
        let taken = store
            .own_endpoints("ahead", vec![endpoint.id], ahead, ahead.add(LONG_LEASE))
            .await
            .unwrap();
        assert!(
            taken.is_empty(),
            "owned until the database's clock says otherwise"
        );

        // A lease from a clock two minutes behind runs its length, where judged by that clock
        // it would have lapsed before it was taken.
        let request = inbound("rzp", "leased-behind", InboundStatus::Processed);
        let e = event("rzp", "invoice.paid", "leased-behind");
        let mut ingest = write(request.clone(), vec![e.clone()]);
        let mut owed = delivery_for(&endpoint, Some(&e), request.id);
        owed.next_attempt_at = behind.sub(Duration::from_secs(1));
        let second = owed.id;
        ingest.deliveries = vec![owed];
        store.ingest(ingest).await.unwrap();
        let claimed = store
            .claim_due(endpoint.id, "behind", behind, behind.add(LONG_LEASE), 10)
            .await
            .unwrap();
        assert_eq!(ids(&claimed), [second]);
        let at_once = Timestamp::now();
        let early = store
            .claim_due(
                endpoint.id,
                "punctual",
                at_once,
                at_once.add(LONG_LEASE),
                10,
            )
            .await
            .unwrap();
        assert!(early.is_empty(), "{:?}", ids(&early));
    });
}

fn ids(claimed: &[ClaimedDelivery]) -> Vec<DeliveryId> {
    claimed.iter().map(|c| c.id).collect()
}

/// A lease that stays live for as long as any test runs, unless [`lapse_lease`] ends it.
const LONG_LEASE: Duration = Duration::from_secs(30);

/// Ends a delivery's lease ten minutes early, as if that time had passed: PostgreSQL judges
/// leases by its own clock, which a test cannot move as it moves the `now` it passes.
async fn lapse_lease(config: &DatabaseConfig, delivery: DeliveryId) {
    execute_directly(
        config,
        "UPDATE deliveries SET lease_until = lease_until - 600000 WHERE id = $1",
        &delivery.to_string(),
    )
    .await;
}

/// Disabling an endpoint holds its deliveries, those under a lapsed lease too (an instance
/// crashed holding them): no instance works a disabled endpoint's pending deliveries. One under
/// a live lease is left to its attempt, whose completion finds the endpoint disabled.
#[test]
fn disabling_holds_deliveries_whose_lease_lapsed() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let now = Timestamp::now();
            let request = inbound("rzp", "lapsed-lease", InboundStatus::Processed);
            let e = event("rzp", "invoice.paid", "inv_lapsed");
            let mut lapsed = delivery_for(&endpoint, Some(&e), request.id);
            lapsed.lease = Some(Lease {
                owner: "crashed".into(),
                until: now.sub(Duration::from_secs(1)),
            });
            let mut live = delivery_for(&endpoint, None, request.id);
            live.lease = Some(Lease {
                owner: "alive".into(),
                until: now.add(Duration::from_secs(60)),
            });
            let mut ingest = write(request, vec![e]);
            ingest.deliveries = vec![lapsed.clone(), live.clone()];
            store.ingest(ingest).await.unwrap();
            let disabling = EndpointPatch {
                enabled: Some(false),
                ..EndpointPatch::default()
            };
            store
                .update_endpoint(endpoint.id, disabling, now)
                .await
                .unwrap();
            let status = |id| async move { store.delivery(id).await.unwrap().unwrap().status };
            assert_eq!(status(lapsed.id).await, DeliveryStatus::Held);
            assert_eq!(status(live.id).await, DeliveryStatus::Pending);
        }
    });
}

/// A retry decided for an attempt that was in flight when its endpoint was disabled (a 410 to
/// another attempt) is written held, with the endpoint's other deliveries, not failed: nothing
/// retries a disabled endpoint's deliveries, and recover takes the held ones. It is judged as
/// it is written: once the endpoint is enabled again, a retry is a retry.
#[test]
fn a_retry_written_after_its_endpoint_was_disabled_is_held() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let first = ingest_owed(store, &endpoint, "in-flight-1").await.delivery;
            let second = ingest_owed(store, &endpoint, "in-flight-2").await.delivery;
            let now = Timestamp::now();
            let claimed = claim_for_w(store, endpoint.id, now).await;
            assert_eq!(claimed.len(), 2);
            let switch = |enabled| EndpointPatch {
                enabled: Some(enabled),
                ..EndpointPatch::default()
            };
            store
                .update_endpoint(endpoint.id, switch(false), now)
                .await
                .unwrap();
            store
                .complete(vec![failed_503(first, endpoint.id, now)], "w", now)
                .await
                .unwrap();
            let record = store.delivery(first).await.unwrap().unwrap();
            assert_eq!((record.status, record.attempts), (DeliveryStatus::Held, 1));

            store
                .update_endpoint(endpoint.id, switch(true), now)
                .await
                .unwrap();
            store
                .complete(vec![failed_503(second, endpoint.id, now)], "w", now)
                .await
                .unwrap();
            let record = store.delivery(second).await.unwrap().unwrap();
            assert_eq!(record.status, DeliveryStatus::Failed);
        }
    });
}

/// A delivery written for an endpoint deleted a moment before (planned by an instance that had
/// not heard of the deletion) is cancelled when asked; a live endpoint's are left alone.
#[test]
fn deliveries_planned_for_a_deleted_endpoint_are_cancelled() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let deleted = canonical_endpoint(store).await;
            let live = canonical_endpoint(store).await;
            assert!(
                store
                    .delete_endpoint(deleted.id, Timestamp::now())
                    .await
                    .unwrap()
            );
            let request = inbound("rzp", "planned-late", InboundStatus::Processed);
            let e = event("rzp", "invoice.paid", "inv_late");
            let orphan = delivery_for(&deleted, Some(&e), request.id);
            let kept = delivery_for(&live, Some(&e), request.id);
            let mut ingest = write(request, vec![e]);
            ingest.deliveries = vec![orphan.clone(), kept.clone()];
            store.ingest(ingest).await.unwrap();
            let cancelled = store
                .cancel_deliveries_of_deleted(vec![deleted.id, live.id], Timestamp::now())
                .await
                .unwrap();
            assert_eq!(cancelled, 1);
            let status = |id| async move { store.delivery(id).await.unwrap().unwrap().status };
            assert_eq!(status(orphan.id).await, DeliveryStatus::Cancelled);
            assert_eq!(status(kept.id).await, DeliveryStatus::Pending);
        }
    });
}

/// What [`ingest_owed`] stored: a message, its one event, and the delivery owed of it.
struct Owed {
    delivery: DeliveryId,
    inbound: NewInbound,
    event: NewEvent,
}

/// Ingests one processed message with one event owed to `endpoint`.
async fn ingest_owed(store: &Store, endpoint: &EndpointRecord, key: &str) -> Owed {
    ingest_owed_at(store, endpoint, key, Timestamp::now()).await
}

/// Like [`ingest_owed`], for a message whose id says it was received at `at`.
async fn ingest_owed_at(
    store: &Store,
    endpoint: &EndpointRecord,
    key: &str,
    at: Timestamp,
) -> Owed {
    let mut request = inbound("rzp", key, InboundStatus::Processed);
    request.id = InboundId::new_at(at);
    request.received_at = at;
    let e = event("rzp", "invoice.paid", key);
    let ingest = owed_write(endpoint, &request, &e);
    let delivery = ingest.deliveries[0].id;
    store.ingest(ingest).await.unwrap();
    Owed {
        delivery,
        inbound: request,
        event: e,
    }
}

/// The write of `request` with its event `e` and one delivery of it owed to `endpoint`, for a
/// test to change the delivery before it is written.
fn owed_write(endpoint: &EndpointRecord, request: &NewInbound, e: &NewEvent) -> IngestWrite {
    let mut ingest = write(request.clone(), vec![e.clone()]);
    ingest.deliveries = vec![delivery_for(endpoint, Some(e), request.id)];
    ingest
}

/// A message whose one delivery to `endpoint` was planned as held (the endpoint disabled as
/// the planning instance saw it).
fn planned_held(endpoint: &EndpointRecord, key: &str) -> IngestWrite {
    let request = inbound("rzp", key, InboundStatus::Processed);
    let mut ingest = owed_write(endpoint, &request, &event("rzp", "invoice.paid", key));
    ingest.deliveries[0].status = DeliveryStatus::Held;
    ingest
}

/// One delivery owed to a new canonical endpoint, claimed by the worker `w` for 30 s from the
/// returned time.
async fn owed_and_claimed(store: &Store, key: &str) -> (EndpointRecord, DeliveryId, Timestamp) {
    let endpoint = canonical_endpoint(store).await;
    let id = ingest_owed(store, &endpoint, key).await.delivery;
    let now = Timestamp::now();
    let claimed = claim_for_w(store, endpoint.id, now).await;
    assert_eq!(claimed.len(), 1);
    (endpoint, id, now)
}

/// Claims up to ten of `endpoint`'s due deliveries for the worker `w`, leased for 30 s from
/// `now`.
async fn claim_for_w(store: &Store, endpoint: EndpointId, now: Timestamp) -> Vec<ClaimedDelivery> {
    store
        .claim_due(endpoint, "w", now, now.add(Duration::from_secs(30)), 10)
        .await
        .unwrap()
}

/// Delivers what [`ingest_owed`] left owed: claimed and completed by the worker `w`.
async fn deliver(store: &Store, owed: &Owed, endpoint: EndpointId) {
    let now = Timestamp::now();
    let claimed = claim_for_w(store, endpoint, now).await;
    assert!(claimed.iter().any(|c| c.id == owed.delivery));
    store
        .complete(vec![delivered_ok(owed.delivery, endpoint, now)], "w", now)
        .await
        .unwrap();
}

/// An endpoint receiving canonical events of every type.
async fn canonical_endpoint(store: &Store) -> EndpointRecord {
    store
        .create_endpoint(new_endpoint("canonical", None))
        .await
        .unwrap()
}

/// Runs `sql` with `id` as its one parameter on the store's database, from a connection of its
/// own: for a test to set up what billhook itself would not write.
async fn execute_directly(config: &DatabaseConfig, sql: &str, id: &str) {
    match config {
        DatabaseConfig::Sqlite { path } => {
            rusqlite::Connection::open(path)
                .unwrap()
                .execute(&sql.replace("$1", "?1"), [id])
                .unwrap();
        }
        DatabaseConfig::Postgres(_) => {
            postgres_session(config)
                .await
                .execute(sql, &[&id])
                .await
                .unwrap();
        }
    }
}

/// A first attempt that the endpoint answered `503`, to be retried at once.
fn failed_503(delivery: DeliveryId, endpoint: EndpointId, now: Timestamp) -> Completion {
    Completion {
        next: NextStep::Retry { at: now },
        attempt: Some(NewAttempt {
            status_code: Some(503),
            response_body: Some(Bytes::from_static(b"busy")),
            ..delivered_ok(delivery, endpoint, now).attempt.unwrap()
        }),
        ..delivered_ok(delivery, endpoint, now)
    }
}

/// A recover checks the endpoint itself as it runs: one disabled or deleted since the caller
/// looked keeps its deliveries as they are.
#[test]
fn a_recover_sends_nothing_for_an_endpoint_disabled_or_deleted_meanwhile() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let (endpoint, id, now) = owed_and_claimed(store, "recover-disabled").await;
            store
                .complete(vec![gone_410(id, endpoint.id, now)], "w", now)
                .await
                .unwrap();
            let since = now.sub(Duration::from_secs(60));
            assert_eq!(
                store.recover(endpoint.id, since, now).await.unwrap().resent,
                0
            );
            let record = store.delivery(id).await.unwrap().unwrap();
            assert_eq!(record.status, DeliveryStatus::Held, "disabled: kept held");

            re_enable(store, endpoint.id, now).await;
            assert!(store.delete_endpoint(endpoint.id, now).await.unwrap());
            assert_eq!(
                store.recover(endpoint.id, since, now).await.unwrap().resent,
                0
            );

            let (live, held, now) = owed_and_claimed(store, "recover-live").await;
            store
                .complete(vec![gone_410(held, live.id, now)], "w", now)
                .await
                .unwrap();
            re_enable(store, live.id, now).await;
            assert_eq!(store.recover(live.id, since, now).await.unwrap().resent, 1);
        }
    });
}

/// A recovery's bound lies above every delivery it resent, even one made by an instance whose
/// clock runs ahead: the bound comes from the ids it walked, not from the clock of the instance
/// serving the request.
#[test]
fn a_recovery_bounds_what_it_resent_by_the_ids_it_walked() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let now = Timestamp::now();
            let ahead = now.add(Duration::from_secs(600));
            let mut ids = Vec::new();
            for (key, made_at) in [("made-now", now), ("made-ahead", ahead)] {
                let request = inbound("rzp", key, InboundStatus::Processed);
                let mut ingest =
                    owed_write(&endpoint, &request, &event("rzp", "invoice.paid", key));
                let delivery = &mut ingest.deliveries[0];
                delivery.id = DeliveryId::new_at(made_at);
                delivery.next_attempt_at = now;
                ids.push(delivery.id);
                store.ingest(ingest).await.unwrap();
            }
            let lease = now.add(Duration::from_secs(30));
            let claimed = store
                .claim_due(endpoint.id, "w", now, lease, 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 2);
            let failures: Vec<_> = ids
                .iter()
                .map(|id| failed_503(*id, endpoint.id, now))
                .collect();
            store.complete(failures, "w", now).await.unwrap();

            let recovery = store
                .recover(endpoint.id, now.sub(Duration::from_secs(60)), now)
                .await
                .unwrap();
            assert_eq!(recovery.resent, 2);
            assert!(
                ids.iter().all(|id| *id < recovery.resent_before),
                "{ids:?} not all before {}",
                recovery.resent_before
            );
            // As the listing's bound, it shows what the recovery resent.
            let pending = store
                .deliveries_of_endpoint(
                    endpoint.id,
                    Some(DeliveryStatus::Pending),
                    (None, Some(recovery.resent_before)),
                    10,
                )
                .await
                .unwrap();
            assert_eq!(pending.items.len(), 2);
        }
    });
}

/// Recovering an endpoint resends its failures, but not a retry that is queued or in flight
/// under a live lease: that one is being sent, and sending it again at once would duplicate it.
#[test]
fn recovery_leaves_a_retry_under_lease_alone() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let ids = [
                ingest_owed(store, &endpoint, "retry-1").await.delivery,
                ingest_owed(store, &endpoint, "retry-2").await.delivery,
            ];
            let now = Timestamp::now();
            let lease = now.add(Duration::from_secs(30));
            assert_eq!(
                store
                    .claim_due(endpoint.id, "w", now, lease, 10)
                    .await
                    .unwrap()
                    .len(),
                2
            );
            let failures: Vec<_> = ids
                .iter()
                .map(|id| failed_503(*id, endpoint.id, now))
                .collect();
            store.complete(failures, "w", now).await.unwrap();
            // Both retries are due; the second is claimed again and is in flight.
            let later = now.add(Duration::from_millis(1));
            let claimed = store
                .claim_due(endpoint.id, "w", later, lease, 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 2);
            store
                .complete(vec![failed_503(ids[0], endpoint.id, later)], "w", later)
                .await
                .unwrap();

            let recovered = store
                .recover(endpoint.id, now.sub(Duration::from_secs(60)), later)
                .await
                .unwrap()
                .resent;
            assert_eq!(recovered, 1, "only the retry no one holds");
            let first = store.delivery(ids[0]).await.unwrap().unwrap();
            assert_eq!((first.status, first.attempts), (DeliveryStatus::Pending, 0));
            let second = store.delivery(ids[1]).await.unwrap().unwrap();
            assert_eq!(
                (second.status, second.attempts),
                (DeliveryStatus::Failed, 1)
            );
            let claimable: Vec<DeliveryId> = store
                .claim_due(endpoint.id, "v", later, lease, 10)
                .await
                .unwrap()
                .iter()
                .map(|c| c.id)
                .collect();
            assert_eq!(
                claimable,
                vec![ids[0]],
                "the held retry stays with its holder"
            );
        }
    });
}

/// An attempt in flight when its endpoint is deleted is recorded, but its retry does not bring
/// the cancelled delivery back.
#[test]
fn a_delivery_cancelled_in_flight_stays_cancelled() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let id = ingest_owed(store, &endpoint, "cancelled-1").await.delivery;
            let now = Timestamp::now();
            let lease = now.add(Duration::from_secs(30));
            let claimed = store
                .claim_due(endpoint.id, "w", now, lease, 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
            assert!(store.delete_endpoint(endpoint.id, now).await.unwrap());

            store
                .complete(vec![failed_503(id, endpoint.id, now)], "w", now)
                .await
                .unwrap();
            let record = store.delivery(id).await.unwrap().unwrap();
            assert_eq!(
                (record.status, record.attempts, record.last_status_code),
                (DeliveryStatus::Cancelled, 1, Some(503))
            );
            assert!(
                store
                    .claim_due(endpoint.id, "w", now, lease, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    });
}

/// An instance cancels a delivery when its endpoint is not in its memory: deleted, most often,
/// but also one it cannot use (written by a newer version). Only a deletion the database holds
/// cancels it; otherwise the delivery is given back as it was, for an instance that can.
#[test]
fn a_cancel_for_an_endpoint_the_database_still_has_gives_the_delivery_back() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let (endpoint, id, now) = owed_and_claimed(store, "cancel-live").await;
            let cancel = Completion {
                delivery_id: id,
                endpoint_id: endpoint.id,
                attempt: None,
                next: NextStep::Cancelled,
                disable_endpoint: None,
            };
            store
                .complete(vec![cancel.clone()], "w", now)
                .await
                .unwrap();
            let record = store.delivery(id).await.unwrap().unwrap();
            assert_eq!(record.status, DeliveryStatus::Pending);
            let lease = now.add(Duration::from_secs(30));
            let claimed = store
                .claim_due(endpoint.id, "w", now, lease, 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1, "unleased and due again");

            // Deleted in the database while the delivery was out (a deletion cancels the rest
            // itself; this one is the outcome's own to cancel).
            execute_directly(
                &test.config,
                "UPDATE endpoints SET deleted_at = 1 WHERE id = $1",
                &endpoint.id.to_string(),
            )
            .await;
            store.complete(vec![cancel], "w", now).await.unwrap();
            let record = store.delivery(id).await.unwrap().unwrap();
            assert_eq!(record.status, DeliveryStatus::Cancelled);
        }
    });
}

/// A batch gives one delivery back and then disables its endpoint for another's 410: as if
/// written one by one, the given-back delivery is held with the endpoint's other waiting ones.
#[test]
fn a_delivery_given_back_before_a_disabling_in_one_batch_is_held() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let given_back = ingest_owed(store, &endpoint, "back-1").await.delivery;
            let gone = ingest_owed(store, &endpoint, "gone-1").await.delivery;
            let now = Timestamp::now();
            let claimed = claim_for_w(store, endpoint.id, now).await;
            assert_eq!(claimed.len(), 2);
            let release = Completion {
                delivery_id: given_back,
                endpoint_id: endpoint.id,
                attempt: None,
                next: NextStep::Released,
                disable_endpoint: None,
            };
            store
                .complete(vec![release, gone_410(gone, endpoint.id, now)], "w", now)
                .await
                .unwrap();
            let status = |id| async move { store.delivery(id).await.unwrap().unwrap().status };
            assert_eq!(status(gone).await, DeliveryStatus::Held);
            assert_eq!(status(given_back).await, DeliveryStatus::Held);
        }
    });
}

/// An owner whose lease lapsed (a long pause, a partition from the database) finishes an
/// attempt after another owner claimed the delivery: the attempt is recorded, but the delivery
/// stays the newer claim's, leased and unfinished, so no third copy is sent meanwhile, and once
/// that claim finished it no late retry brings it back, nor, once retention removed it, leaves
/// an attempt behind.
#[test]
fn a_completion_after_the_lease_was_taken_over_leaves_the_new_claim_alone() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let id = ingest_owed(store, &endpoint, "lapsed").await.delivery;
            let now = Timestamp::now();
            let claimed = store
                .claim_due(endpoint.id, "stalled", now, now.add(LONG_LEASE), 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
            lapse_lease(&test.config, id).await;
            let lapsed = Timestamp::now();
            let second_lease = lapsed.add(Duration::from_secs(30));
            let taken = store
                .claim_due(endpoint.id, "taker", lapsed, second_lease, 10)
                .await
                .unwrap();
            assert_eq!(taken.len(), 1);

            store
                .complete(vec![failed_503(id, endpoint.id, now)], "stalled", now)
                .await
                .unwrap();
            let record = store.delivery(id).await.unwrap().unwrap();
            assert_eq!(
                (record.status, record.attempts),
                (DeliveryStatus::Pending, 0)
            );
            let attempts = store
                .attempts_of_endpoint(endpoint.id, None, 10)
                .await
                .unwrap();
            assert_eq!(attempts.items.len(), 1);
            let before_second_lapses = second_lease.sub(Duration::from_millis(1));
            assert!(
                store
                    .claim_due(endpoint.id, "third", before_second_lapses, second_lease, 10)
                    .await
                    .unwrap()
                    .is_empty(),
                "the new claim's lease was cleared by the stale completion"
            );

            store
                .complete(vec![delivered_ok(id, endpoint.id, now)], "taker", now)
                .await
                .unwrap();
            // A late retry from the lapsed owner cannot bring a finished delivery back.
            store
                .complete(vec![failed_503(id, endpoint.id, now)], "stalled", now)
                .await
                .unwrap();
            let record = store.delivery(id).await.unwrap().unwrap();
            assert_eq!(
                (record.status, record.attempts, record.last_status_code),
                (DeliveryStatus::Delivered, 1, Some(200))
            );
            assert_eq!(
                store
                    .attempts_of_endpoint(endpoint.id, None, 10)
                    .await
                    .unwrap()
                    .items
                    .len(),
                3
            );

            // Retention removes the finished message; a completion later still leaves no
            // attempt behind that no pass would ever remove.
            let everything = InboundId::lower_bound(now.add(Duration::from_secs(1)));
            let pruned = store.prune(everything, None, 10).await.unwrap();
            assert_eq!(pruned.removed.attempts, 3, "{pruned:?}");
            store
                .complete(vec![failed_503(id, endpoint.id, now)], "stalled", now)
                .await
                .unwrap();
            assert!(store.delivery(id).await.unwrap().is_none());
            assert!(
                store
                    .attempts_of_endpoint(endpoint.id, None, 10)
                    .await
                    .unwrap()
                    .items
                    .is_empty(),
                "an attempt was recorded for a delivery retention removed"
            );
        }
    });
}

/// A batch of outcomes is written again when its commit went unanswered (the connection lost
/// after the server committed): the second write succeeds and records each attempt once.
#[test]
fn a_batch_of_outcomes_written_twice_records_each_attempt_once() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let (endpoint, id, now) = owed_and_claimed(store, "twice").await;
            let batch = vec![failed_503(id, endpoint.id, now)];
            store.complete(batch.clone(), "w", now).await.unwrap();
            // Its retry fell due and the same owner claimed it again before the batch was
            // written the second time: the write lands on the new claim, and counts no more.
            let again = claim_for_w(store, endpoint.id, now).await;
            assert_eq!(again.len(), 1);
            store.complete(batch, "w", now).await.unwrap();
            let attempts = store
                .attempts_of_endpoint(endpoint.id, None, 10)
                .await
                .unwrap();
            assert_eq!(attempts.items.len(), 1, "{:?}", attempts.items);
            let record = store.delivery(id).await.unwrap().unwrap();
            assert_eq!(
                (record.status, record.attempts),
                (DeliveryStatus::Failed, 1)
            );
        }
    });
}

/// A PostgreSQL server that answers but cannot be written (a standby after a failover, or read
/// only by default) is not ready. Played with a role of its own made read-only by default, its
/// pooled connections then dropped so that the pool reconnects under the new default (the new
/// role logs in without a password, as the test server's trust authentication allows).
#[test]
fn a_read_only_postgres_is_not_ready() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let DatabaseConfig::Postgres(mut options) = config else {
            unreachable!("a PostgreSQL configuration")
        };
        let role = format!("billhook_test_ro_{}", Timestamp::now().unix_millis());
        let admin = postgres_session(&DatabaseConfig::Postgres(options.clone())).await;
        // Roles a failed run left behind.
        for row in admin
            .query(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'billhook_test_ro_%'",
                &[],
            )
            .await
            .unwrap()
        {
            let left: String = row.get(0);
            let _ = admin
                .batch_execute(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{left}';
                     DROP OWNED BY {left}; DROP ROLE {left}"
                ))
                .await;
        }
        admin
            .batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER"))
            .await
            .unwrap();
        let user_at = options.url.find("://").unwrap() + 3;
        let host_at = options.url[user_at..].find('@').unwrap() + user_at;
        options.url.replace_range(user_at..host_at, &role);
        let store = Store::open(&DatabaseConfig::Postgres(options))
            .await
            .unwrap();
        store.ping().await.expect("a writable database is ready");

        admin
            .batch_execute(&format!(
                "ALTER ROLE {role} SET default_transaction_read_only = on;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
            ))
            .await
            .unwrap();
        // The first pings may meet a connection being dropped (failing, or still answering as
        // before); then the pool's new ones answer.
        let mut refused = None;
        for _ in 0..40 {
            match store.ping().await {
                Err(error) if error.to_string().contains("read-only") => {
                    refused = Some(error);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let refused = refused.expect("refused as read-only");
        assert!(matches!(refused, StoreError::Unavailable(_)), "{refused}");
        // A write refused for it is one to try again later (503), not a fault (500).
        let write = store
            .prune_dedup(Timestamp::now(), 10)
            .await
            .expect_err("a read-only server refuses writes");
        assert!(matches!(write, StoreError::Unavailable(_)), "{write}");

        store.close().await;
        admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';
                 DROP OWNED BY {role}; DROP ROLE {role}"
            ))
            .await
            .unwrap();
    });
}

/// The outcome of an attempt begun at `now` that the endpoint answered `410 Gone`.
fn gone_410(delivery: DeliveryId, endpoint: EndpointId, now: Timestamp) -> Completion {
    Completion {
        attempt: Some(NewAttempt {
            status_code: Some(410),
            ..delivered_ok(delivery, endpoint, now).attempt.unwrap()
        }),
        next: NextStep::Held,
        disable_endpoint: Some("the endpoint answered 410 Gone".into()),
        ..delivered_ok(delivery, endpoint, now)
    }
}

/// An operator's re-enabling of `endpoint` at `at`.
async fn re_enable(store: &Store, endpoint: EndpointId, at: Timestamp) {
    switch(store, endpoint, true, at).await;
}

/// An operator's enabling or disabling of `endpoint` at `at`.
async fn switch(store: &Store, endpoint: EndpointId, enabled: bool, at: Timestamp) {
    let patch = EndpointPatch {
        enabled: Some(enabled),
        ..EndpointPatch::default()
    };
    store.update_endpoint(endpoint, patch, at).await.unwrap();
}

/// A delivery planned as held whose endpoint was enabled before it is written (by another
/// instance, or just before) is written pending: the enabling's recovery has run, and nothing
/// else would release it. One whose endpoint is still disabled is written held.
#[test]
fn a_delivery_planned_as_held_is_written_pending_if_its_endpoint_is_enabled() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let write_held = |key: &'static str| {
                let ingest = planned_held(&endpoint, key);
                async move {
                    let id = ingest.deliveries[0].id;
                    store.ingest(ingest).await.unwrap();
                    store.delivery(id).await.unwrap().unwrap().status
                }
            };
            assert_eq!(write_held("enabled").await, DeliveryStatus::Pending);
            switch(store, endpoint.id, false, Timestamp::now()).await;
            assert_eq!(write_held("disabled").await, DeliveryStatus::Held);
        }
    });
}

/// On PostgreSQL, a delivery planned as held and written pending (its endpoint enabled
/// meanwhile) is announced to every instance, as one planned pending is: no worker was handed
/// it, and without a notification it would wait for a poller's next look. One written held
/// (its endpoint still disabled) is not: that would wake every instance at every message for
/// an endpoint that stays disabled.
#[test]
fn a_delivery_planned_as_held_is_announced_only_if_written_pending() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let listening = Store::open(&config).await.unwrap();
        let mut notifications = listening.subscribe().expect("PostgreSQL notifies");
        let mut next = async |within: Duration| {
            tokio::time::timeout(within, notifications.recv())
                .await
                .ok()
                .flatten()
        };
        let soon = Duration::from_secs(5);
        assert_eq!(next(soon).await, Some(Notification::Reconnected));
        let store = Store::open(&config).await.unwrap();
        let endpoint = canonical_endpoint(&store).await;
        assert_eq!(next(soon).await, Some(Notification::Endpoints));
        let held = planned_held(&endpoint, "held-then-enabled");
        let id = held.deliveries[0].id;
        store.ingest(held).await.unwrap();
        let record = store.delivery(id).await.unwrap().unwrap();
        assert_eq!(record.status, DeliveryStatus::Pending);
        assert_eq!(next(soon).await, Some(Notification::Deliveries));

        switch(&store, endpoint.id, false, Timestamp::now()).await;
        assert_eq!(next(soon).await, Some(Notification::Endpoints));
        let held = planned_held(&endpoint, "held-and-disabled");
        let id = held.deliveries[0].id;
        store.ingest(held).await.unwrap();
        let record = store.delivery(id).await.unwrap().unwrap();
        assert_eq!(record.status, DeliveryStatus::Held);
        assert_eq!(next(Duration::from_millis(500)).await, None);
        store.close().await;
        listening.close().await;
    });
}

/// On PostgreSQL, a delivery planned as held while its endpoint's enabling is not committed yet
/// waits for that enabling and is written pending: written held, it would be invisible to the
/// recovery the enabling runs next, and stay held on an enabled endpoint.
#[test]
fn a_delivery_planned_as_held_waits_for_an_enabling_in_flight() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let store = Store::open(&config).await.unwrap();
        let endpoint = canonical_endpoint(&store).await;
        switch(&store, endpoint.id, false, Timestamp::now()).await;
        let mut operator = postgres_session(&config).await;
        let enabling = operator.transaction().await.unwrap();
        enabling
            .execute(
                "UPDATE endpoints SET enabled = true WHERE id = $1",
                &[&endpoint.id.to_string()],
            )
            .await
            .unwrap();
        let ingest = planned_held(&endpoint, "held-while-enabling");
        let id = ingest.deliveries[0].id;
        let written = tokio::spawn({
            let store = store.clone();
            async move { store.ingest(ingest).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!written.is_finished(), "the write waits for the enabling");
        enabling.commit().await.unwrap();
        written.await.unwrap().unwrap();
        let status = store.delivery(id).await.unwrap().unwrap().status;
        assert_eq!(status, DeliveryStatus::Pending);
    });
}

/// A 410 answered to an attempt that began before an operator changed its endpoint (re-enabled
/// it, say) disables nothing, and its delivery is retried rather than held on an enabled
/// endpoint, where nothing would ever send it.
#[test]
fn a_410_to_an_attempt_older_than_its_endpoint_s_change_is_retried() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let (endpoint, id, now) = owed_and_claimed(store, "gone-meanwhile").await;
            re_enable(store, endpoint.id, now.add(Duration::from_secs(1))).await;
            let gone = gone_410(id, endpoint.id, now);
            let later = now.add(Duration::from_secs(2));
            store.complete(vec![gone], "w", later).await.unwrap();
            assert!(store.endpoint(endpoint.id).await.unwrap().unwrap().enabled);
            let record = store.delivery(id).await.unwrap().unwrap();
            assert_eq!(record.status, DeliveryStatus::Failed);
            let again = store
                .claim_due(
                    endpoint.id,
                    "w",
                    later,
                    later.add(Duration::from_secs(30)),
                    10,
                )
                .await
                .unwrap();
            assert_eq!(again.len(), 1, "due again at once");
        }
    });
}

/// A delivery left pending for an endpoint that is disabled (planned as it was disabled) is
/// held when asked, like those the disabling held; those of enabled endpoints are left alone.
#[test]
fn due_deliveries_of_a_disabled_endpoint_are_held_when_asked() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let owed = ingest_owed(store, &endpoint, "late-for-disabled").await;
            let now = Timestamp::now();
            assert_eq!(
                store
                    .hold_deliveries_of_disabled(vec![endpoint.id], now)
                    .await
                    .unwrap(),
                0,
                "enabled: left to its lane"
            );
            // Disabled behind the store's back, so the delivery stays pending as one planned
            // by an instance that had not heard of the disabling would.
            execute_directly(
                &test.config,
                "UPDATE endpoints SET enabled = false WHERE id = $1",
                &endpoint.id.to_string(),
            )
            .await;
            assert_eq!(
                store
                    .hold_deliveries_of_disabled(vec![endpoint.id], now)
                    .await
                    .unwrap(),
                1
            );
            let record = store.delivery(owed.delivery).await.unwrap().unwrap();
            assert_eq!(record.status, DeliveryStatus::Held);
        }
    });
}

/// A 410's disabling, written a second time after an operator re-enabled the endpoint (the
/// first write's answer was lost), leaves the endpoint enabled: the operator's word is later.
#[test]
fn a_disable_written_again_after_a_re_enable_leaves_the_endpoint_enabled() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let (endpoint, id, now) = owed_and_claimed(store, "gone-twice").await;
            let gone = gone_410(id, endpoint.id, now);
            let later = now.add(Duration::from_secs(5));
            store
                .complete(vec![gone.clone()], "w", later)
                .await
                .unwrap();
            let disabled = store.endpoint(endpoint.id).await.unwrap().unwrap();
            assert!(!disabled.enabled);

            re_enable(store, endpoint.id, now.add(Duration::from_secs(10))).await;
            store
                .complete(vec![gone], "w", now.add(Duration::from_secs(15)))
                .await
                .unwrap();
            let record = store.endpoint(endpoint.id).await.unwrap().unwrap();
            assert!(
                record.enabled,
                "re-enabled by the operator, and so it stays"
            );
            assert_eq!(record.disabled_reason, None);
        }
    });
}

/// A delivery of an event that outlived its message (an announcement about a payment whose
/// last message retention has removed) is still claimed and carries the event: a claim that
/// leased it without returning it would keep it from being sent, lease after lease.
#[test]
fn a_delivery_whose_message_is_gone_is_still_claimed() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let owed = ingest_owed(store, &endpoint, "orphan-1").await;
            execute_directly(
                &test.config,
                "DELETE FROM inbound WHERE id = $1",
                &owed.inbound.id.to_string(),
            )
            .await;

            let now = Timestamp::now();
            let claimed = claim_for_w(store, endpoint.id, now).await;
            assert_eq!(claimed.len(), 1);
            assert_eq!(claimed[0].id, owed.delivery);
            assert_eq!(claimed[0].payload.as_deref(), Some(&owed.event.payload[..]));
        }
    });
}

#[test]
fn leases_can_be_renewed_and_released() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let endpoint = canonical_endpoint(store).await;
            let request = inbound("rzp", "lease-1", InboundStatus::Processed);
            let e = event("rzp", "invoice.paid", "inv_1");
            let mut ingest = write(request.clone(), vec![e.clone()]);
            let now = Timestamp::now();
            let leased_at_ingest = || {
                let mut delivery = delivery_for(&endpoint, Some(&e), request.id);
                delivery.lease = Some(Lease {
                    owner: "ingest".into(),
                    until: now.add(LONG_LEASE),
                });
                delivery
            };
            let (kept, lapsing) = (leased_at_ingest(), leased_at_ingest());
            ingest.deliveries = vec![kept.clone(), lapsing.clone()];
            store.ingest(ingest).await.unwrap();
            let until = now.add(Duration::from_secs(60));
            assert_eq!(
                store
                    .renew_leases("other", vec![kept.id], now, until)
                    .await
                    .unwrap(),
                vec![],
                "only the lease's owner renews it"
            );
            assert_eq!(
                store
                    .renew_leases("ingest", vec![kept.id], now, until)
                    .await
                    .unwrap(),
                vec![kept.id]
            );
            lapse_lease(&test.config, lapsing.id).await;
            let later = Timestamp::now();
            assert_eq!(
                store
                    .renew_leases("ingest", vec![lapsing.id], later, later.add(LONG_LEASE))
                    .await
                    .unwrap(),
                vec![],
                "a lease that lapsed is not renewed, claimed since or not"
            );
            let claimed = store
                .claim_due(endpoint.id, "other", later, later.add(LONG_LEASE), 10)
                .await
                .unwrap();
            assert_eq!(ids(&claimed), [lapsing.id], "the renewed lease holds");
            if store.is_single_process() {
                assert_eq!(store.release_all_leases().await.unwrap(), 2);
                let claimed = store
                    .claim_due(endpoint.id, "other", later, later.add(LONG_LEASE), 10)
                    .await
                    .unwrap();
                assert_eq!(claimed.len(), 2);
            }
        }
    });
}

#[test]
fn a_first_version_database_upgrades_with_its_data_intact() {
    runtime().block_on(async {
        for (config, _dir) in [sqlite_config(), postgres_config().await] {
            let old = Store::open_at(&config, Some(1)).await.unwrap();
            assert_eq!(old.schema_version().await.unwrap(), 1);
            let request = inbound("rzp", "from-v1", InboundStatus::Processed);
            let e = event("rzp", "invoice.paid", "inv_v1");
            old.ingest(write(request.clone(), vec![e.clone()]))
                .await
                .unwrap();
            let quarantined = inbound("rzp", "sha256:v1", InboundStatus::Quarantined);
            old.ingest(write(quarantined.clone(), vec![]))
                .await
                .unwrap();
            old.close().await;

            let current = Store::open(&config).await.unwrap();
            assert_eq!(
                current.schema_version().await.unwrap(),
                Store::latest_version(&config)
            );
            assert_eq!(
                current.event(e.id).await.unwrap().unwrap().payload,
                e.payload
            );
            let stored = current.inbound(request.id).await.unwrap().unwrap();
            assert_eq!(stored.body.as_deref(), Some(&request.body[..]));
            assert_eq!(stored.event_ids, vec![e.id]);
            assert_eq!(
                current
                    .inbound(quarantined.id)
                    .await
                    .unwrap()
                    .unwrap()
                    .status,
                InboundStatus::Quarantined
            );
            // The duplicate check still knows the old message.
            let again = inbound("rzp", "from-v1", InboundStatus::Processed);
            assert!(matches!(
                current.ingest(write(again, vec![])).await.unwrap(),
                IngestOutcome::Duplicate { .. }
            ));
            // And what later versions added works on the upgraded data.
            let endpoint = current
                .create_endpoint(new_endpoint("canonical", None))
                .await
                .unwrap();
            assert_eq!(
                current
                    .endpoint_stats(endpoint.id, Timestamp::now())
                    .await
                    .unwrap()
                    .delivered,
                0
            );
            current.close().await;
        }
    });
}

/// Each applied migration's checksum is recorded; one recorded by a billhook from before
/// checksums is filled in at the next start, and a migration whose text no longer matches what
/// the database applied stops the start.
#[test]
fn a_migration_changed_since_it_was_applied_stops_the_start() {
    // Line endings and trailing blanks are not a change; a statement is.
    assert_eq!(
        migration_checksum("CREATE TABLE a (x INTEGER);\r\nCREATE INDEX b ON a (x);  \n\n"),
        migration_checksum("CREATE TABLE a (x INTEGER);\nCREATE INDEX b ON a (x);")
    );
    assert_ne!(
        migration_checksum("CREATE TABLE a (x INTEGER);"),
        migration_checksum("CREATE TABLE a (x TEXT);")
    );
    runtime().block_on(async {
        for test in backends().await {
            let TestStore {
                store,
                config,
                _dir,
            } = test;
            store.close().await;
            let sql = |statement: &str| {
                let config = config.clone();
                let statement = statement.to_owned();
                async move {
                    match &config {
                        DatabaseConfig::Sqlite { path } => rusqlite::Connection::open(path)
                            .unwrap()
                            .execute_batch(&statement)
                            .unwrap(),
                        DatabaseConfig::Postgres(_) => postgres_session(&config)
                            .await
                            .batch_execute(&statement)
                            .await
                            .unwrap(),
                    }
                }
            };
            let recorded = |config: DatabaseConfig| async move {
                let count = "SELECT count(*) FROM billhook_migrations WHERE checksum IS NOT NULL";
                match &config {
                    DatabaseConfig::Sqlite { path } => rusqlite::Connection::open(path)
                        .unwrap()
                        .query_row(count, [], |row| row.get::<_, i64>(0))
                        .unwrap(),
                    DatabaseConfig::Postgres(_) => postgres_session(&config)
                        .await
                        .query_one(count, &[])
                        .await
                        .unwrap()
                        .get::<_, i64>(0),
                }
            };
            let applied = recorded(config.clone()).await;
            assert!(applied > 1, "every applied migration has its checksum");

            // The bookkeeping as an older billhook left it: no checksums at all.
            sql("ALTER TABLE billhook_migrations DROP COLUMN checksum").await;
            Store::open(&config).await.unwrap().close().await;
            assert_eq!(
                recorded(config.clone()).await,
                applied,
                "filled in at start"
            );
            sql("UPDATE billhook_migrations SET checksum = NULL WHERE version = 1").await;
            Store::open(&config).await.unwrap().close().await;
            assert_eq!(recorded(config.clone()).await, applied);

            sql("UPDATE billhook_migrations SET checksum = 'edited' WHERE version = 2").await;
            let refused = Store::open(&config).await.err();
            assert_eq!(refused, Some(StoreError::MigrationChanged { version: 2 }));
        }
    });
}

/// Deployments sharing one PostgreSQL database in schemas of their own migrate without waiting
/// for each other: the migration lock is the schema's.
#[test]
fn a_start_does_not_wait_for_a_migration_in_another_schema() {
    runtime().block_on(async {
        let (elsewhere, _dir) = postgres_config().await;
        let other_deployment = postgres_session(&elsewhere).await;
        other_deployment
            .execute(postgres::LOCK_MIGRATIONS, &[&postgres::MIGRATION_LOCK])
            .await
            .unwrap();
        let (config, _dir) = postgres_config().await;
        let store = tokio::time::timeout(Duration::from_secs(20), Store::open(&config))
            .await
            .expect("opens while another schema migrates")
            .unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            postgres::latest_version()
        );
        store.close().await;
    });
}

/// Once the schema is up to date, billhook starts as a role that may read and write its tables
/// but not create anything: many deployments migrate with the schema's owner and run with less.
#[test]
fn a_role_that_only_reads_and_writes_starts_an_up_to_date_schema() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        Store::open(&config).await.unwrap().close().await;
        let owner = postgres_session(&config).await;
        let role = format!("billhook_test_writer_{:08x}", rand::random::<u32>());
        owner
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN;
                 DO $$ BEGIN EXECUTE format('GRANT USAGE ON SCHEMA %I TO {role}', current_schema());
                    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO {role}',
                        current_schema());
                    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO {role}',
                        current_schema()); END $$;"
            ))
            .await
            .unwrap();
        let DatabaseConfig::Postgres(options) = &config else {
            unreachable!("a PostgreSQL configuration")
        };
        let mut as_writer = options.clone();
        // The test URL has a query (its search_path); a later `user` overrides one before it.
        as_writer.url = format!("{}&user={role}", options.url);
        // Nothing here may panic before the role is dropped: the role outlives the schema.
        let opened = Store::open(&DatabaseConfig::Postgres(as_writer)).await;
        let mut connected_as = None;
        let mut written = None;
        if let Ok(store) = &opened {
            if let Backend::Postgres(postgres) = store.backend.as_ref()
                && let Ok(client) = postgres.client().await
            {
                connected_as = client
                    .query_one("SELECT current_user::TEXT", &[])
                    .await
                    .ok()
                    .map(|row| row.get::<_, String>(0));
            }
            written = Some(store.create_endpoint(new_endpoint("raw", None)).await);
            store.close().await;
        }
        owner
            .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
            .await
            .unwrap();
        assert!(opened.is_ok(), "{:?}", opened.err());
        assert_eq!(connected_as.as_deref(), Some(role.as_str()));
        assert!(matches!(written, Some(Ok(_))), "{written:?}");
    });
}

/// A PostgreSQL instance starting while another migrates waits for it, however much longer
/// than the statement timeout that takes, and then opens; its connections keep the timeout.
#[test]
fn a_start_waits_out_another_instance_s_migration_past_the_statement_timeout() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let DatabaseConfig::Postgres(mut options) = config.clone() else {
            unreachable!("a PostgreSQL configuration")
        };
        options.statement_timeout = Duration::from_millis(300);
        options.pool_size = 1;
        let other_instance = postgres_session(&config).await;
        other_instance
            .execute(postgres::LOCK_MIGRATIONS, &[&postgres::MIGRATION_LOCK])
            .await
            .unwrap();
        let opening =
            tokio::spawn(async move { Store::open(&DatabaseConfig::Postgres(options)).await });
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert!(!opening.is_finished(), "waits for the other migration");
        other_instance
            .execute(postgres::UNLOCK_MIGRATIONS, &[&postgres::MIGRATION_LOCK])
            .await
            .unwrap();
        let store = opening
            .await
            .unwrap()
            .expect("opens once the other is done");
        assert_eq!(
            store.schema_version().await.unwrap(),
            postgres::latest_version()
        );
        let Backend::Postgres(postgres) = store.backend.as_ref() else {
            unreachable!("a PostgreSQL store")
        };
        let client = postgres.client().await.unwrap();
        let timeout: String = client
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            timeout, "300ms",
            "the pool's connection has its timeout back"
        );
        store.close().await;
    });
}

/// Every acknowledgement waits for its commit to be durable: billhook's connections commit
/// synchronously even where the URL (or the server's, or the role's default) says otherwise.
#[test]
fn postgres_connections_commit_synchronously_whatever_the_defaults() {
    runtime().block_on(async {
        let (config, _dir) = postgres_config().await;
        let DatabaseConfig::Postgres(mut options) = config else {
            unreachable!("a PostgreSQL configuration")
        };
        options.url = options
            .url
            .replace("options=", "options=-c%20synchronous_commit%3Doff%20");
        assert!(
            options.url.contains("synchronous_commit"),
            "{}",
            options.url
        );
        let store = Store::open(&DatabaseConfig::Postgres(options))
            .await
            .unwrap();
        let Backend::Postgres(postgres) = store.backend.as_ref() else {
            unreachable!("a PostgreSQL store")
        };
        let client = postgres.client().await.unwrap();
        let setting: String = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(setting, "on");
        store.close().await;
    });
}

/// SQLite's migration 6 rebuilds the outbox, attempts and dedup tables: what they held must come
/// through whole and keep working.
#[test]
fn the_clustered_outbox_migration_keeps_deliveries_attempts_and_dedup_keys() {
    runtime().block_on(async {
        let (config, _dir) = sqlite_config();
        let old = Store::open_at(&config, Some(5)).await.unwrap();
        let endpoint = old
            .create_endpoint(new_endpoint("canonical", None))
            .await
            .unwrap();
        let request = inbound("rzp", "before-6", InboundStatus::Processed);
        let e = event("rzp", "invoice.paid", "inv_6");
        let mut ingest = write(request.clone(), vec![e.clone()]);
        ingest.deliveries = vec![
            delivery_for(&endpoint, Some(&e), request.id),
            delivery_for(&endpoint, None, request.id),
        ];
        let (delivered, waiting) = (ingest.deliveries[0].id, ingest.deliveries[1].id);
        // Handed off at ingest, as a worker does, so the completion is the lease holder's.
        ingest.deliveries[0].lease = Some(Lease {
            owner: "w".to_owned(),
            until: Timestamp::now().add(Duration::from_secs(30)),
        });
        old.ingest(ingest).await.unwrap();
        let now = Timestamp::now();
        old.complete(vec![delivered_ok(delivered, endpoint.id, now)], "w", now)
            .await
            .unwrap();
        old.close().await;

        let current = Store::open(&config).await.unwrap();
        assert_eq!(
            current.schema_version().await.unwrap(),
            Store::latest_version(&config)
        );
        let first = current.delivery(delivered).await.unwrap().unwrap();
        assert_eq!(
            (first.status, first.attempts, first.last_status_code),
            (DeliveryStatus::Delivered, 1, Some(200))
        );
        let second = current.delivery(waiting).await.unwrap().unwrap();
        assert_eq!(
            (second.status, second.attempts),
            (DeliveryStatus::Pending, 0)
        );
        let attempts = current
            .attempts_of_endpoint(endpoint.id, None, 10)
            .await
            .unwrap();
        assert_eq!(attempts.items.len(), 1);
        assert_eq!(attempts.items[0].response_body.as_deref(), Some(&b"ok"[..]));
        let claimed = claim_for_w(&current, endpoint.id, now).await;
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, waiting);
        let again = inbound("rzp", "before-6", InboundStatus::Processed);
        assert!(matches!(
            current.ingest(write(again, vec![])).await.unwrap(),
            IngestOutcome::Duplicate { .. }
        ));
        current.close().await;
    });
}

mod ledger;
mod operations;
