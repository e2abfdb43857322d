//! The ledger on PostgreSQL: the repository the core's ledger rules run against inside an
//! ingest transaction, and the ledger's queries.

use billhook_core::entity::SubjectKind;
use billhook_core::event::EventType;
use billhook_core::ids::EventId;
use billhook_core::ledger::{
    self, Concluded, Conclusion, Entity, Fact, GroupedLedger, HistoryEntry, LedgerRepo,
    LookupColumn, PaymentRef, PaymentRefs, Precedence, ReadAhead, Reading, Snapshot, TargetKeys,
    id_bounds,
};
use billhook_core::money::{Amount, Currency};
use billhook_core::time::Timestamp;
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::ingest::{insert_deliveries, insert_events, parse_id};
use super::read::Filters;
use super::{PgStore, column, execute_cached, pg_error};
use crate::StoreError;
use crate::model::*;
use crate::page::{clamp_limit, paginate};

const ENTITY_COLUMNS: &str = "id, kind, provider, provider_id, source, status,
    provider_status, status_level, status_at, status_tiebreak, status_settles, content_at,
    content_tiebreak, snapshot, number, order_ref, ref_invoice, ref_order, ref_merchant,
    ref_remark, ref_bill, ref_biller, currency, amount, counted, paid, due, overpaid, due_by,
    linked_to, link_rule, settled_event, settled_at, unmatched_event, created_at, updated_at,
    inbound_id, sandbox, former_numbers";

fn millis(value: Option<i64>) -> Option<Timestamp> {
    value.map(Timestamp::from_unix_millis)
}

fn to_bits(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

/// The advisory lock key a ledger lock name is taken under.
fn advisory_key(lock: &ledger::LockName) -> i64 {
    to_bits(ledger::stable_hash(&["billhook-ledger", &lock.name]))
}

fn from_bits(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

fn to_entity(row: &Row) -> Result<Entity, StoreError> {
    let kind: &str = row.get(1);
    let kind = SubjectKind::parse(kind)
        .ok_or_else(|| StoreError::Corrupt(format!("ledger kind `{kind}`")))?;
    let snapshot: &str = row.get(13);
    let sandbox: bool = row.get(37);
    Ok(Entity {
        id: row.get(0),
        kind,
        provider: row.get(2),
        provider_id: row.get(3),
        source: row.get(4),
        sandbox,
        status: row.get(5),
        provider_status: row.get(6),
        status_precedence: Precedence {
            level: row.get(7),
            at: row.get(8),
            tiebreak: from_bits(row.get(9)),
        },
        status_settles: row.get(10),
        content_precedence: Precedence {
            level: 0,
            at: row.get(11),
            tiebreak: from_bits(row.get(12)),
        },
        snapshot: Snapshot::from_stored(kind, snapshot)
            .map_err(|e| StoreError::Corrupt(format!("ledger snapshot: {e}")))?,
        keys: TargetKeys {
            number: row.get(14),
            order_id: row.get(15),
            former_numbers: row
                .get::<_, Option<&str>>(38)
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("former numbers: {e}")))?
                .unwrap_or_default(),
        },
        refs: PaymentRefs {
            invoice_id: row.get(16),
            order_id: row.get(17),
            merchant_reference: row.get(18),
            remark: row.get(19),
            bill_ref_id: row.get(20),
            biller_ref_id: row.get(21),
            sandbox,
            provider: row.get(2),
        },
        currency: row
            .get::<_, Option<&str>>(22)
            .map(Currency::parse)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        amount: row.get::<_, Option<i64>>(23).map(Amount::from_minor),
        counted: Amount::from_minor(row.get(24)),
        paid: Amount::from_minor(row.get(25)),
        due: row.get::<_, Option<i64>>(26).map(Amount::from_minor),
        overpaid: Amount::from_minor(row.get(27)),
        due_by: millis(row.get(28)),
        linked_to: row.get(29),
        link_rule: row.get(30),
        settled_event: row.get::<_, Option<&str>>(31).map(parse_id).transpose()?,
        settled_at: millis(row.get(32)),
        unmatched_event: row.get::<_, Option<&str>>(33).map(parse_id).transpose()?,
        created_at: Timestamp::from_unix_millis(row.get(34)),
        updated_at: Timestamp::from_unix_millis(row.get(35)),
        inbound_id: parse_id(row.get::<_, &str>(36))?,
    })
}

/// The entities a condition selects, on the plan the connection keeps for its text. A ledger
/// group's transaction plans with bitmap scans only (`LedgerGroup::begin`), and a setting counts
/// only when a statement is planned, so the group's conditions are never the same text as a
/// listing's here: a listing planned first would leave the group a plan that may scan.
async fn query_entities<C: GenericClient>(
    client: &C,
    condition: &str,
    values: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Entity>, StoreError> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {ENTITY_COLUMNS} FROM ledger_entities WHERE {condition}"
        ))
        .await
        .map_err(pg_error)?;
    let rows = client.query(&statement, values).await.map_err(pg_error)?;
    rows.iter().map(to_entity).collect()
}

/// Runs a link lookup (an OR of references) as a prepared statement on the plan its connection
/// keeps (`apply_facts` makes the transaction use kept plans): planning such an OR over the
/// ledger's many indexes costs several times running it. A kept plan is only as good as the
/// statistics it was made with: `PgStore::refresh_statistics` analyzes the ledger whenever it
/// has doubled, which also makes every connection plan anew, and the transaction plans with
/// bitmap scans only (no sequential or plain index scans), so a plan made while the ledger was
/// a few pages does not read all of it as it grows.
async fn link_lookup(
    transaction: &Transaction<'_>,
    condition: &str,
    references: &[Option<&str>],
) -> Result<Vec<Entity>, StoreError> {
    let params: Vec<&(dyn ToSql + Sync)> = references
        .iter()
        .map(|value| value as &(dyn ToSql + Sync))
        .collect();
    query_entities(transaction, condition, &params).await
}

/// Writes entities, each at most once, in one statement.
async fn save_entities<C: GenericClient>(
    client: &C,
    entities: &[Entity],
) -> Result<(), StoreError> {
    if entities.is_empty() {
        return Ok(());
    }
    let snapshots = entities
        .iter()
        .map(|e| e.snapshot.json())
        .collect::<Option<Vec<&str>>>()
        .ok_or_else(|| StoreError::Database("a ledger snapshot did not serialize".to_owned()))?;
    let text = |value: fn(&Entity) -> Option<&str>| column(entities, value);
    let number = |value: fn(&Entity) -> Option<i64>| column(entities, value);
    let ids = column(entities, |e| e.id.as_str());
    let kinds = column(entities, |e| e.kind.as_str());
    let providers = column(entities, |e| e.provider.as_str());
    let provider_ids = column(entities, |e| e.provider_id.as_str());
    let sources = column(entities, |e| e.source.as_str());
    let statuses = text(|e| e.status.as_deref());
    let provider_statuses = text(|e| e.provider_status.as_deref());
    let status_levels = column(entities, |e| e.status_precedence.level);
    let status_at = column(entities, |e| e.status_precedence.at);
    let status_tiebreaks = column(entities, |e| to_bits(e.status_precedence.tiebreak));
    let status_settles = column(entities, |e| e.status_settles);
    let content_at = column(entities, |e| e.content_precedence.at);
    let content_tiebreaks = column(entities, |e| to_bits(e.content_precedence.tiebreak));
    let numbers = text(|e| e.keys.number.as_deref());
    let order_refs = text(|e| e.keys.order_id.as_deref());
    let ref_invoices = text(|e| e.refs.invoice_id.as_deref());
    let ref_orders = text(|e| e.refs.order_id.as_deref());
    let ref_merchants = text(|e| e.refs.merchant_reference.as_deref());
    let ref_remarks = text(|e| e.refs.remark.as_deref());
    let ref_bills = text(|e| e.refs.bill_ref_id.as_deref());
    let ref_billers = text(|e| e.refs.biller_ref_id.as_deref());
    let currencies = text(|e| e.currency.as_ref().map(Currency::as_str));
    let amounts = number(|e| e.amount.map(|a| a.minor()));
    let counted = column(entities, |e| e.counted.minor());
    let paid = column(entities, |e| e.paid.minor());
    let due = number(|e| e.due.map(|a| a.minor()));
    let overpaid = column(entities, |e| e.overpaid.minor());
    let due_by = number(|e| e.due_by.map(|t| t.unix_millis()));
    let linked_to = text(|e| e.linked_to.as_deref());
    let link_rules = text(|e| e.link_rule.as_deref());
    let settled_events = column(entities, |e| e.settled_event.map(|id| id.to_string()));
    let settled_at = number(|e| e.settled_at.map(|t| t.unix_millis()));
    let unmatched_events = column(entities, |e| e.unmatched_event.map(|id| id.to_string()));
    let created_at = column(entities, |e| e.created_at.unix_millis());
    let updated_at = column(entities, |e| e.updated_at.unix_millis());
    let inbound_ids = column(entities, |e| e.inbound_id.to_string());
    let sandbox = column(entities, |e| e.sandbox);
    let former_numbers = entities
        .iter()
        .map(|e| {
            let formers = &e.keys.former_numbers;
            (!formers.is_empty())
                .then(|| serde_json::to_string(formers))
                .transpose()
        })
        .collect::<Result<Vec<Option<String>>, _>>()
        .map_err(|e| StoreError::Database(format!("former numbers: {e}")))?;
    execute_cached(
        client,
        &format!(
            "INSERT INTO ledger_entities ({ENTITY_COLUMNS})
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::text[], $7::text[], $8::int[], $9::bigint[], $10::bigint[], $11::bool[],
                $12::bigint[], $13::bigint[], $14::text[], $15::text[], $16::text[],
                $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[],
                $23::text[], $24::bigint[], $25::bigint[], $26::bigint[], $27::bigint[],
                $28::bigint[], $29::bigint[], $30::text[], $31::text[], $32::text[],
                $33::bigint[], $34::text[], $35::bigint[], $36::bigint[], $37::text[],
                $38::bool[], $39::text[])
             ON CONFLICT (id) DO UPDATE SET source = excluded.source, status = excluded.status,
                provider_status = excluded.provider_status, status_level = excluded.status_level,
                status_at = excluded.status_at, status_tiebreak = excluded.status_tiebreak,
                status_settles = excluded.status_settles, content_at = excluded.content_at,
                content_tiebreak = excluded.content_tiebreak, snapshot = excluded.snapshot,
                number = excluded.number, former_numbers = excluded.former_numbers,
                order_ref = excluded.order_ref,
                ref_invoice = excluded.ref_invoice, ref_order = excluded.ref_order,
                ref_merchant = excluded.ref_merchant, ref_remark = excluded.ref_remark,
                ref_bill = excluded.ref_bill, ref_biller = excluded.ref_biller,
                currency = excluded.currency, amount = excluded.amount, counted = excluded.counted,
                paid = excluded.paid, due = excluded.due, overpaid = excluded.overpaid,
                due_by = excluded.due_by, linked_to = excluded.linked_to,
                link_rule = excluded.link_rule, settled_event = excluded.settled_event,
                settled_at = excluded.settled_at, unmatched_event = excluded.unmatched_event,
                updated_at = excluded.updated_at, inbound_id = excluded.inbound_id"
        ),
        &[
            &ids,
            &kinds,
            &providers,
            &provider_ids,
            &sources,
            &statuses,
            &provider_statuses,
            &status_levels,
            &status_at,
            &status_tiebreaks,
            &status_settles,
            &content_at,
            &content_tiebreaks,
            &snapshots,
            &numbers,
            &order_refs,
            &ref_invoices,
            &ref_orders,
            &ref_merchants,
            &ref_remarks,
            &ref_bills,
            &ref_billers,
            &currencies,
            &amounts,
            &counted,
            &paid,
            &due,
            &overpaid,
            &due_by,
            &linked_to,
            &link_rules,
            &settled_events,
            &settled_at,
            &unmatched_events,
            &created_at,
            &updated_at,
            &inbound_ids,
            &sandbox,
            &former_numbers,
        ],
    )
    .await?;
    Ok(())
}

async fn record_announcement(
    store: &PgStore,
    transaction: &Transaction<'_>,
    announcement: &Announcement,
) -> Result<EventId, StoreError> {
    insert_events(
        transaction,
        announcement.inbound_id,
        std::slice::from_ref(&announcement.event),
    )
    .await?;
    insert_deliveries(
        store,
        transaction,
        announcement.inbound_id,
        &announcement.deliveries,
        announcement.planned_at,
    )
    .await?;
    Ok(announcement.event.id)
}

/// Reads what applying `facts` will ask about, in at most three statements however many facts
/// there are (see `ReadAhead`): their entities and what they link to, then what their entities,
/// as stored, link to besides (when anything), both locked as the lookups they replace lock
/// them, then the payments linked to the invoices and bills they will total.
async fn read_ahead(
    transaction: &Transaction<'_>,
    facts: &[&Fact],
) -> Result<ReadAhead, StoreError> {
    let mut read_ahead = ReadAhead::default();
    let first = ReadAhead::first_round(facts);
    if first.is_empty() {
        return Ok(read_ahead);
    }
    let found = read_entities(transaction, &first).await?;
    read_ahead.add(first, found);
    let second = read_ahead.second_round();
    if !second.is_empty() {
        let found = read_entities(transaction, &second).await?;
        read_ahead.add(second, found);
    }
    let targets = read_ahead.linked_targets(facts);
    if !targets.is_empty() {
        // Not locked, as `linked_payments` never locked them: they are summed, and one to be
        // changed is held afresh first (`hold`).
        let found = query_entities(transaction, "linked_to = ANY($1)", &[&targets]).await?;
        read_ahead.add_linked(targets, found);
    }
    Ok(read_ahead)
}

/// The entities that answer any part of `reading`, locked in id order. One statement whatever
/// the parts, so the connection plans it once: an empty array costs its index scan nothing. The
/// ORs are over indexed columns, as in `link_lookup`, so the planner combines index scans (the
/// identity's tuple is checked on the rows its `provider_id` finds), and each reference index is
/// searched only for the values that could match in it (`LookupColumn`).
async fn read_entities(
    transaction: &Transaction<'_>,
    reading: &Reading,
) -> Result<Vec<Entity>, StoreError> {
    if reading.is_empty() {
        return Ok(Vec::new());
    }
    let kinds = column(&reading.identities, |(kind, _, _)| kind.as_str());
    let providers = column(&reading.identities, |(_, provider, _)| provider.as_str());
    let provider_ids = column(&reading.identities, |(_, _, id)| id.as_str());
    let asked = |column: LookupColumn| reading.values(column);
    let payments = |reference: PaymentRef| asked(LookupColumn::Payment(reference));
    query_entities(
        transaction,
        "(provider_id = ANY($3)
            AND (provider_id, kind, provider) IN (SELECT * FROM unnest($3::text[], $1::text[], $2::text[])))
         OR ((provider_id = ANY($4) OR order_ref = ANY($5) OR number = ANY($6)
              OR (former_numbers IS NOT NULL AND former_numbers::jsonb ?| $6))
            AND kind || '' IN ('invoice', 'bill'))
         OR ((ref_invoice = ANY($7) OR ref_order = ANY($8) OR ref_merchant = ANY($9)
              OR ref_remark = ANY($10) OR ref_bill = ANY($11) OR ref_biller = ANY($12))
            AND kind || '' = 'payment' AND linked_to IS NULL)
         OR id = ANY($13)
         ORDER BY id FOR UPDATE",
        &[
            &kinds,
            &providers,
            &provider_ids,
            &asked(LookupColumn::TargetId),
            &asked(LookupColumn::TargetOrder),
            &asked(LookupColumn::TargetNumber),
            &payments(PaymentRef::InvoiceId),
            &payments(PaymentRef::OrderId),
            &payments(PaymentRef::MerchantReference),
            &payments(PaymentRef::Remark),
            &payments(PaymentRef::BillRefId),
            &payments(PaymentRef::BillerRefId),
            &reading.ids,
        ],
    )
    .await
}

/// The ledger tables as seen from inside one transaction, each question one statement. A
/// group of facts asks through `LedgerGroup`, which seldom needs to. History rows are never read
/// back while facts apply, so they are kept and written in one statement at the end.
struct PgLedger<'a> {
    store: &'a PgStore,
    transaction: &'a Transaction<'a>,
    concluder: Option<&'a dyn Concluder>,
    history: Vec<HistoryEntry>,
}

impl LedgerRepo for PgLedger<'_> {
    type Error = StoreError;

    async fn entity(
        &mut self,
        kind: SubjectKind,
        provider: &str,
        provider_id: &str,
    ) -> Result<Option<Entity>, StoreError> {
        // FOR UPDATE: concurrent ingests about one entity take turns instead of overwriting.
        let found = query_entities(
            self.transaction,
            "kind = $1 AND provider = $2 AND provider_id = $3 FOR UPDATE",
            &[&kind.as_str(), &provider, &provider_id],
        )
        .await?;
        Ok(found.into_iter().next())
    }

    async fn entity_by_id(&mut self, id: &str) -> Result<Option<Entity>, StoreError> {
        Ok(
            query_entities(self.transaction, "id = $1 FOR UPDATE", &[&id])
                .await?
                .into_iter()
                .next(),
        )
    }

    /// Taken after the group's own locks, so out of their sorted order: a writer holding
    /// one of these and waiting for one of the group's makes a deadlock, which the database
    /// breaks and the ingest retries. Rare: only a payment linked to an invoice that turns out
    /// to be received is held so.
    async fn hold(&mut self, entity: &Entity) -> Result<Option<Entity>, StoreError> {
        let (keys, exclusive): (Vec<i64>, Vec<bool>) = ledger::payment_lock_names(entity)
            .into_iter()
            .map(|lock| (advisory_key(&lock), lock.exclusive))
            .unzip();
        execute_cached(
            self.transaction,
            "SELECT count(*) FROM
               (SELECT CASE WHEN exclusive THEN pg_advisory_xact_lock(key)
                            ELSE pg_advisory_xact_lock_shared(key) END
                FROM unnest($1::bigint[], $2::bool[]) AS l(key, exclusive)
                ORDER BY key) AS locked",
            &[&keys, &exclusive],
        )
        .await?;
        self.entity_by_id(&entity.id).await
    }

    async fn targets_for(&mut self, refs: &PaymentRefs) -> Result<Vec<Entity>, StoreError> {
        link_lookup(
            self.transaction,
            // The first line is an OR of indexed references the planner can combine (a
            // BitmapOr); `kind || ''` keeps it from reading every invoice's entry in the identity
            // index (its second column is the kind) instead. Locked: payments seeking one
            // reference hold it only shared (see `lock_names`), so two of them paying one invoice
            // take turns on its row instead.
            // A former number's test spells out the index's condition, which the planner does
            // not infer from `?|` alone (an array's null elements name nothing).
            "(provider_id IN ($1, $3, $4, $5) OR order_ref = $2 OR number IN ($3, $4, $6)
              OR (former_numbers IS NOT NULL AND former_numbers::jsonb ?| ARRAY[$3, $4, $6]))
             AND ((kind || '' = 'invoice' AND (provider_id IN ($1, $3, $4) OR order_ref = $2 OR number IN ($3, $4)
                     OR former_numbers::jsonb ?| ARRAY[$3, $4]))
               OR (kind || '' = 'bill' AND (provider_id = $5 OR number = $6
                     OR former_numbers::jsonb ? $6)))
             ORDER BY id FOR UPDATE",
            &[
                refs.invoice_id.as_deref(),
                refs.order_id.as_deref(),
                refs.merchant_reference.as_deref(),
                refs.remark.as_deref(),
                refs.bill_ref_id.as_deref(),
                refs.biller_ref_id.as_deref(),
            ],
        )
        .await
    }

    async fn linkable_payments(&mut self, target: &Entity) -> Result<Vec<Entity>, StoreError> {
        let mut found = Vec::new();
        // The current number first; a former one (rare) asks again by the same statement.
        let numbers = std::iter::once(target.keys.number.as_deref())
            .chain(target.keys.former_numbers.iter().map(|n| Some(n.as_str())));
        for number in numbers {
            let payments = match target.kind {
                SubjectKind::Invoice => {
                    link_lookup(
                        self.transaction,
                        // `kind || ''` keeps the planner from intersecting with the kind's entries
                        // in the identity index, a read of every payment's (a common remark makes
                        // the generic plan think the references select many rows).
                        "(ref_invoice = $1 OR ref_order = $2 OR ref_merchant IN ($1, $3) OR ref_remark IN ($1, $3))
                         AND kind || '' = 'payment' AND linked_to IS NULL FOR UPDATE",
                        &[
                            Some(&target.provider_id),
                            target.keys.order_id.as_deref(),
                            number,
                        ],
                    )
                    .await?
                }
                SubjectKind::Bill => {
                    link_lookup(
                        self.transaction,
                        "(ref_bill = $1 OR ref_biller = $2) AND kind || '' = 'payment' AND linked_to IS NULL
                         FOR UPDATE",
                        &[Some(&target.provider_id), number],
                    )
                    .await?
                }
                _ => Vec::new(),
            };
            for payment in payments {
                if !found.iter().any(|seen: &Entity| seen.id == payment.id) {
                    found.push(payment);
                }
            }
        }
        Ok(found)
    }

    async fn linked_payments(&mut self, target: &Entity) -> Result<Vec<Entity>, StoreError> {
        link_lookup(self.transaction, "linked_to = $1", &[Some(&target.id)]).await
    }

    async fn save(&mut self, entity: &Entity) -> Result<(), StoreError> {
        save_entities(self.transaction, std::slice::from_ref(entity)).await
    }

    async fn record_history(&mut self, entry: &HistoryEntry) -> Result<(), StoreError> {
        self.history.push(entry.clone());
        Ok(())
    }

    async fn conclude(&mut self, conclusion: &Conclusion) -> Result<EventId, StoreError> {
        let Some(concluder) = self.concluder else {
            return Err(StoreError::Database(
                "the ledger reached a conclusion with no concluder".to_owned(),
            ));
        };
        record_announcement(
            self.store,
            self.transaction,
            &concluder.announce(conclusion),
        )
        .await
    }
}

/// The ledger as a group of facts applies to it, inside one transaction: its entities and
/// history are written when all its facts are applied (`finish`), each in one statement,
/// however many requests the transaction holds.
pub(super) struct LedgerGroup<'a>(GroupedLedger<PgLedger<'a>>);

impl<'a> LedgerGroup<'a> {
    /// Locks what the facts about to be applied name, reads ahead what they will ask, and
    /// returns the ledger to apply them to.
    pub(super) async fn begin(
        store: &'a PgStore,
        transaction: &'a Transaction<'a>,
        facts: impl IntoIterator<Item = &Fact>,
    ) -> Result<Self, StoreError> {
        // Row locks cannot cover rows that do not exist yet: a payment and its invoice ingested
        // at the same moment on two instances would each miss the other. Transaction-scoped
        // advisory locks on what the facts name make such writers take turns; taken in one
        // sorted batch, so two transactions never wait on each other in a cycle.
        let facts: Vec<&Fact> = facts.into_iter().collect();
        let mut keys = Vec::new();
        let mut exclusive = Vec::new();
        for fact in facts.iter().copied() {
            for lock in ledger::lock_names(std::slice::from_ref(fact)) {
                keys.push(advisory_key(&lock));
                exclusive.push(lock.exclusive);
            }
        }
        if !keys.is_empty() {
            // The same statement tells the transaction to run prepared statements on the plans
            // its connection keeps: PostgreSQL would otherwise plan most link lookups anew each
            // time (a plan for the values at hand looks cheaper than one for any values), and
            // planning an OR over the ledger's indexes costs several times running it. See
            // `link_lookup`. Those plans find rows by their keys, so they are made to read
            // only through the keys' indexes (bitmap scans): a plan made while the ledger was
            // a few pages would read all of it, in a sequential scan or along the primary key
            // for its order, testing every reference on every row, until the next ANALYZE
            // (several milliseconds a lookup at a few thousand rows). The settings apply when a
            // statement is planned, so the statements that rely on them run only in here.
            execute_cached(
                transaction,
                "SELECT set_config('plan_cache_mode', 'force_generic_plan', true),
                       set_config('enable_seqscan', 'off', true),
                       set_config('enable_indexscan', 'off', true),
                       (SELECT count(*) FROM
                          (SELECT CASE WHEN exclusive THEN pg_advisory_xact_lock(key)
                                       ELSE pg_advisory_xact_lock_shared(key) END
                           FROM (SELECT key, bool_or(exclusive) AS exclusive
                                 FROM unnest($1::bigint[], $2::bool[]) AS l(key, exclusive)
                                 GROUP BY key ORDER BY key) AS sorted) AS locked)",
                &[&keys, &exclusive],
            )
            .await?;
        }
        let ledger = PgLedger {
            store,
            transaction,
            concluder: None,
            history: Vec::new(),
        };
        Ok(Self(GroupedLedger::new(
            ledger,
            read_ahead(transaction, &facts).await?,
        )))
    }

    /// Applies the facts of one request, in order; returns the events the ledger concluded.
    pub(super) async fn apply(
        &mut self,
        facts: &[Fact],
        concluder: Option<&'a dyn Concluder>,
    ) -> Result<Vec<Concluded>, StoreError> {
        self.0.store.concluder = concluder;
        let mut concluded = Vec::new();
        for fact in facts {
            concluded.extend(ledger::apply(&mut self.0, fact).await?.conclusions);
        }
        Ok(concluded)
    }

    /// Writes the entities and the history of every fact applied.
    pub(super) async fn finish(self) -> Result<(), StoreError> {
        let GroupedLedger {
            store: ledger,
            unwritten,
            ..
        } = self.0;
        save_entities(ledger.transaction, &unwritten.into_entities()).await?;
        let history = &ledger.history;
        if history.is_empty() {
            return Ok(());
        }
        let entity_ids = column(history, |h| h.entity_id.as_str());
        let event_ids = column(history, |h| h.event_id.to_string());
        let event_types = column(history, |h| h.event_type.as_str());
        let statuses = column(history, |h| h.status.as_deref());
        let provider_statuses = column(history, |h| h.provider_status.as_deref());
        let levels = column(history, |h| h.level);
        let occurred_at = column(history, |h| h.occurred_at.unix_millis());
        let received_at = column(history, |h| h.received_at.unix_millis());
        let applied = column(history, |h| h.applied);
        execute_cached(
            ledger.transaction,
            "INSERT INTO ledger_history (entity_id, event_id, event_type, status,
                provider_status, level, occurred_at, received_at, applied)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::int[], $7::bigint[], $8::bigint[], $9::bool[])",
            &[
                &entity_ids,
                &event_ids,
                &event_types,
                &statuses,
                &provider_statuses,
                &levels,
                &occurred_at,
                &received_at,
                &applied,
            ],
        )
        .await?;
        Ok(())
    }
}

/// Applies the facts of one reprocessed request to the ledger, inside its transaction.
pub(super) async fn apply_facts(
    store: &PgStore,
    transaction: &Transaction<'_>,
    facts: &[Fact],
    concluder: Option<&dyn Concluder>,
) -> Result<Vec<Concluded>, StoreError> {
    let mut ledger = LedgerGroup::begin(store, transaction, facts).await?;
    let concluded = ledger.apply(facts, concluder).await?;
    ledger.finish().await?;
    Ok(concluded)
}

impl PgStore {
    /// Analyzes the ledger when it has doubled since it was last analyzed (by this, or by
    /// autovacuum, which at first runs only once a minute). Link lookups run on plans the
    /// connections keep (see `link_lookup`), which read only through indexes whatever the
    /// statistics; analyzing makes them plan anew, choosing among those indexes for the ledger
    /// as it now is, and gives listings the histogram of ids they are planned by. Only the
    /// columns lookups and listings filter on are analyzed, a third of the time of the whole
    /// table (migration 7 says why the payments' references are declared all distinct).
    /// Returns whether it analyzed.
    pub(crate) async fn refresh_statistics(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        // From the catalog and the activity counters of the one table: `pg_stat_user_tables`
        // computes every table's counters first, slow in a database of many schemas.
        let stale = || async {
            client
                .query_opt(
                    "SELECT 1 FROM pg_class
                     WHERE oid = to_regclass('ledger_entities')
                       AND pg_stat_get_live_tuples(oid) > GREATEST(100, 2 * reltuples)",
                    &[],
                )
                .await
                .map(|row| row.is_some())
                .map_err(pg_error)
        };
        if !stale().await? {
            return Ok(false);
        }
        client
            .batch_execute(
                // SKIP_LOCKED: when several instances see the ledger double at once, one
                // analyzes and the others go on. `id`'s histogram is what tells a listing that
                // a kind's range of ids holds many rows, to be read newest first and stopped.
                // `former_numbers`: nearly all null, which tells a listing by reference that its
                // test of them costs nothing.
                "ANALYZE (SKIP_LOCKED) ledger_entities (id, kind, provider_id, number, order_ref,
                    ref_invoice, ref_order, ref_merchant, ref_remark, ref_bill, ref_biller,
                    linked_to, former_numbers)",
            )
            .await
            .map_err(pg_error)?;
        if stale().await? {
            // Skipped because another session holds the table's maintenance lock (another
            // instance analyzing it, autovacuum): nothing is wrong, and the next check asks again.
            let busy = client
                .query_opt(
                    "SELECT 1 FROM pg_locks
                     WHERE relation = to_regclass('ledger_entities') AND granted
                       AND pid <> pg_backend_pid()
                       AND mode IN ('ShareUpdateExclusiveLock', 'ShareLock',
                                    'ShareRowExclusiveLock', 'ExclusiveLock',
                                    'AccessExclusiveLock')",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .is_some();
            if busy {
                return Ok(false);
            }
            // ANALYZE skips, with only a warning, a table the role may not maintain; said as an
            // error so the caller backs off instead of asking again every few seconds.
            return Err(StoreError::Database(
                "the ledger's planner statistics are still stale after ANALYZE: billhook's \
                 database role may not own ledger_entities"
                    .to_owned(),
            ));
        }
        Ok(true)
    }

    pub(crate) async fn ledger_entities(
        &self,
        query: LedgerQuery,
    ) -> Result<Page<Entity>, StoreError> {
        let client = self.client().await?;
        let limit = clamp_limit(query.limit);
        let mut filters = listing_filters(&query);
        let condition = filters.sql().trim_start_matches("WHERE ").to_owned();
        let rows = filters.bind(i64::from(limit) + 1);
        let mut items = query_entities(
            &client,
            &format!("{condition} ORDER BY id DESC LIMIT {rows}"),
            &filters.params(),
        )
        .await?;
        Ok(paginate(&mut items, limit, |e| e.id.clone()))
    }

    pub(crate) async fn ledger_listing_exceeds(
        &self,
        query: LedgerQuery,
        rows: u64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let mut filters = listing_filters(&query);
        let condition = filters.sql().trim_start_matches("WHERE ").to_owned();
        let offset = filters.bind(i64::try_from(rows).unwrap_or(i64::MAX));
        let statement = client
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM ledger_entities WHERE {condition}
                    ORDER BY id DESC LIMIT 1 OFFSET {offset})"
            ))
            .await
            .map_err(pg_error)?;
        Ok(client
            .query_one(&statement, &filters.params())
            .await
            .map_err(pg_error)?
            .get(0))
    }

    pub(crate) async fn ledger_entity(&self, id: String) -> Result<Option<Entity>, StoreError> {
        let client = self.client().await?;
        Ok(query_entities(&client, "id = $1", &[&id])
            .await?
            .into_iter()
            .next())
    }

    pub(crate) async fn ledger_linked(&self, id: String) -> Result<Vec<Entity>, StoreError> {
        let client = self.client().await?;
        query_entities(&client, "linked_to = $1 ORDER BY id", &[&id]).await
    }

    pub(crate) async fn ledger_history(&self, id: String) -> Result<Vec<HistoryEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT entity_id, event_id, event_type, status, provider_status, level,
                    occurred_at, received_at, applied
                 FROM ledger_history WHERE entity_id = $1 ORDER BY seq",
                &[&id],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                Ok(HistoryEntry {
                    entity_id: row.get(0),
                    event_id: parse_id(row.get::<_, &str>(1))?,
                    event_type: row
                        .get::<_, &str>(2)
                        .parse::<EventType>()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    status: row.get(3),
                    provider_status: row.get(4),
                    level: row.get(5),
                    occurred_at: Timestamp::from_unix_millis(row.get(6)),
                    received_at: Timestamp::from_unix_millis(row.get(7)),
                    applied: row.get(8),
                })
            })
            .collect()
    }

    pub(crate) async fn unmatched_payments(
        &self,
        before: Timestamp,
        limit: u32,
    ) -> Result<Vec<Entity>, StoreError> {
        let client = self.client().await?;
        query_entities(
            &client,
            &format!(
                "kind = 'payment' AND counted > 0 AND linked_to IS NULL AND unmatched_event IS NULL
                 AND created_at <= $1 ORDER BY id LIMIT {limit}"
            ),
            &[&before.unix_millis()],
        )
        .await
    }

    pub(crate) async fn record_unmatched(
        &self,
        payment_id: String,
        announcement: Announcement,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        let still = transaction
            .query_opt(
                "SELECT id FROM ledger_entities
                 WHERE id = $1 AND counted > 0 AND linked_to IS NULL AND unmatched_event IS NULL
                 FOR UPDATE",
                &[&payment_id],
            )
            .await
            .map_err(pg_error)?;
        if still.is_none() {
            return Ok(false);
        }
        // The payment's message can be old enough for retention, which checks statement by
        // statement that nothing it removes is owed: held here, retention passes over it (its
        // lock skips what is locked), or, holding it already, has removed it once this returns,
        // and the announcement outlives it as any announcement may.
        transaction
            .query_opt(
                "SELECT 1 FROM inbound WHERE id = $1 FOR SHARE",
                &[&announcement.inbound_id.to_string()],
            )
            .await
            .map_err(pg_error)?;
        let event = record_announcement(self, &transaction, &announcement).await?;
        transaction
            .execute(
                "UPDATE ledger_entities SET unmatched_event = $2 WHERE id = $1",
                &[&payment_id, &event.to_string()],
            )
            .await
            .map_err(pg_error)?;
        transaction.commit().await.map_err(pg_error)?;
        Ok(true)
    }
}

/// The conditions of a ledger listing, its cursor included.
fn listing_filters(query: &LedgerQuery) -> Filters {
    let mut filters = Filters::default();
    // The kind's range of ids is what the primary key serves the listing by (migration 8).
    // Only entities of the kind have ids in it, so the kind is not compared as well: the
    // planner, taking the two for independent, would think the listing selects few rows and
    // sort all of them instead of reading the newest first.
    let (lower, upper) = id_bounds(query.kind);
    filters.add("id", ">", Some(lower.to_owned()));
    filters.add("id", "<", Some(upper));
    let closed = CLOSED_UNPAID
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    // Owed: something is due, or the amount is unknown and no status said it was paid (a
    // Bharat Connect invoice without value details, closed `PAID`, is paid).
    let unpaid = format!(
        "(due > 0 OR (due IS NULL AND NOT status_settles)) AND COALESCE(status, '') NOT IN ({closed})"
    );
    match &query.filter {
        LedgerFilter::All => {}
        LedgerFilter::Outstanding => filters.add_clause(unpaid),
        LedgerFilter::Overdue => {
            filters.add_clause(unpaid);
            filters.add("due_by", "<", Some(query.now.unix_millis()));
        }
        LedgerFilter::Paid => {
            filters.add_clause("(due = 0 OR (due IS NULL AND status_settles))".to_owned())
        }
        LedgerFilter::Unmatched => {
            filters.add_clause("counted > 0 AND linked_to IS NULL".to_owned())
        }
        LedgerFilter::Status(status) => filters.add("status", "=", Some(status.clone())),
    }
    filters.add("provider", "=", query.provider.clone());
    filters.add("source", "=", query.source.clone());
    filters.add_with(
        |p| {
            format!(
                "(provider_id = {p} OR number = {p}
                  OR (former_numbers IS NOT NULL AND former_numbers::jsonb ? {p}))"
            )
        },
        query.reference.clone(),
    );
    filters.add("id", "<", query.before.clone());
    filters
}
