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
    _dir: tempfile::TempDir,
    path: PathBuf,
}

async fn backends() -> Vec<TestStore> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/billhook.db");
    let store = Store::open(&DatabaseConfig::Sqlite { path: path.clone() })
        .await
        .unwrap();
    vec![TestStore {
        store,
        _dir: dir,
        path,
    }]
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
        dedup_expires_at: Timestamp::now().add(Duration::from_secs(8 * 86_400)),
    }
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
                    event_ids: expected_ids.clone()
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
            let all = store
                .events(EventQuery {
                    limit: 100,
                    ..EventQuery::default()
                })
                .await
                .unwrap();
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
                    limit: 100,
                    ..EventQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(paid.items.len(), 4);
            let source_b = store
                .events(EventQuery {
                    source: Some("b".into()),
                    limit: 100,
                    ..EventQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(source_b.items.len(), 2);
            let subject = store
                .events(EventQuery {
                    subject: Some("subj_0".into()),
                    limit: 100,
                    ..EventQuery::default()
                })
                .await
                .unwrap();
            assert_eq!(subject.items.len(), 3);
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
                        events: vec![new_event],
                        dedup_expires_at: Timestamp::now().add(Duration::from_secs(3600)),
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                done,
                ReprocessOutcome::Processed {
                    event_ids: vec![new_event_id]
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
                        events: vec![event("cam", "document.received", "doc_1")],
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
            let reopened = Store::open(&DatabaseConfig::Sqlite {
                path: test.path.clone(),
            })
            .await
            .unwrap();
            assert_eq!(
                reopened.event(e.id).await.unwrap().unwrap().payload,
                e.payload
            );
            assert_eq!(
                reopened.schema_version().await.unwrap(),
                sqlite::latest_version()
            );
            reopened.ping().await.unwrap();
        }
    });
}
