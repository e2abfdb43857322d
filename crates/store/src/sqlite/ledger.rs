//! The ledger on SQLite: the repository the core's ledger rules run against inside the writer's
//! transaction, and the ledger's queries.

use std::collections::HashMap;
use std::sync::LazyLock;

use billhook_core::entity::SubjectKind;
use billhook_core::event::EventType;
use billhook_core::ids::EventId;
use billhook_core::ledger::{
    self, Concluded, Conclusion, Entity, Fact, HistoryEntry, LedgerRepo, PaymentRefs, Precedence,
    Snapshot, TargetKeys, id_bounds,
};
use billhook_core::money::{Amount, Currency};
use billhook_core::time::Timestamp;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::delivery::insert_deliveries;
use super::ingest::{EventEntities, insert_events, parse_id};
use super::{SqliteStore, db_error};
use crate::StoreError;
use crate::model::*;
use crate::page::{clamp_limit, paginate};

macro_rules! entity_columns {
    () => {
        "id, kind, provider, provider_id, source, status,
    provider_status, status_level, status_at, status_tiebreak, status_settles, content_at,
    content_tiebreak, snapshot, number, order_ref, ref_invoice, ref_order, ref_merchant,
    ref_remark, ref_bill, ref_biller, currency, amount, counted, paid, due, overpaid, due_by,
    linked_to, link_rule, settled_event, settled_at, unmatched_event, created_at, updated_at,
    inbound_id, former_numbers, sandbox"
    };
}

pub(crate) const ENTITY_COLUMNS: &str = entity_columns!();

/// `SELECT` of every entity column where `condition` holds, written out at compile time: the
/// writer's lookups run several times per message and should not format their SQL each time.
macro_rules! select_entities {
    ($condition:expr) => {
        concat!(
            "SELECT ",
            entity_columns!(),
            " FROM ledger_entities WHERE ",
            $condition
        )
    };
}

/// The same for a condition made at run time (listings with their filters).
fn select_entities_where(condition: &str) -> String {
    format!("SELECT {ENTITY_COLUMNS} FROM ledger_entities WHERE {condition}")
}

fn millis(value: Option<i64>) -> Option<Timestamp> {
    value.map(Timestamp::from_unix_millis)
}

/// Hashes are `u64`; the column is a signed 64-bit integer holding the same bits.
fn to_bits(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

fn from_bits(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

fn entity_row(row: &Row<'_>) -> rusqlite::Result<Result<Entity, StoreError>> {
    let kind: String = row.get(1)?;
    let snapshot: String = row.get(13)?;
    let currency: Option<String> = row.get(22)?;
    let settled_event: Option<String> = row.get(31)?;
    let unmatched_event: Option<String> = row.get(33)?;
    let former_numbers: Option<String> = row.get(37)?;
    let sandbox: bool = row.get(38)?;
    let parts = (|| -> Result<Entity, StoreError> {
        let kind = SubjectKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("ledger kind `{kind}`")))?;
        Ok(Entity {
            id: row.get(0).map_err(db_error)?,
            kind,
            provider: row.get(2).map_err(db_error)?,
            provider_id: row.get(3).map_err(db_error)?,
            source: row.get(4).map_err(db_error)?,
            sandbox,
            status: row.get(5).map_err(db_error)?,
            provider_status: row.get(6).map_err(db_error)?,
            status_precedence: Precedence {
                level: row.get(7).map_err(db_error)?,
                at: row.get(8).map_err(db_error)?,
                tiebreak: from_bits(row.get(9).map_err(db_error)?),
            },
            status_settles: row.get(10).map_err(db_error)?,
            content_precedence: Precedence {
                level: 0,
                at: row.get(11).map_err(db_error)?,
                tiebreak: from_bits(row.get(12).map_err(db_error)?),
            },
            snapshot: Snapshot::from_stored(kind, &snapshot)
                .map_err(|e| StoreError::Corrupt(format!("ledger snapshot: {e}")))?,
            keys: TargetKeys {
                number: row.get(14).map_err(db_error)?,
                order_id: row.get(15).map_err(db_error)?,
                former_numbers: former_numbers
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(format!("former numbers: {e}")))?
                    .unwrap_or_default(),
            },
            refs: PaymentRefs {
                invoice_id: row.get(16).map_err(db_error)?,
                order_id: row.get(17).map_err(db_error)?,
                merchant_reference: row.get(18).map_err(db_error)?,
                remark: row.get(19).map_err(db_error)?,
                bill_ref_id: row.get(20).map_err(db_error)?,
                biller_ref_id: row.get(21).map_err(db_error)?,
                sandbox,
                provider: row.get(2).map_err(db_error)?,
            },
            currency: currency
                .as_deref()
                .map(Currency::parse)
                .transpose()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            amount: row
                .get::<_, Option<i64>>(23)
                .map_err(db_error)?
                .map(Amount::from_minor),
            counted: Amount::from_minor(row.get(24).map_err(db_error)?),
            paid: Amount::from_minor(row.get(25).map_err(db_error)?),
            due: row
                .get::<_, Option<i64>>(26)
                .map_err(db_error)?
                .map(Amount::from_minor),
            overpaid: Amount::from_minor(row.get(27).map_err(db_error)?),
            due_by: millis(row.get(28).map_err(db_error)?),
            linked_to: row.get(29).map_err(db_error)?,
            link_rule: row.get(30).map_err(db_error)?,
            settled_event: settled_event.as_deref().map(parse_id).transpose()?,
            settled_at: millis(row.get(32).map_err(db_error)?),
            unmatched_event: unmatched_event.as_deref().map(parse_id).transpose()?,
            created_at: Timestamp::from_unix_millis(row.get(34).map_err(db_error)?),
            updated_at: Timestamp::from_unix_millis(row.get(35).map_err(db_error)?),
            inbound_id: parse_id(&row.get::<_, String>(36).map_err(db_error)?)?,
        })
    })();
    Ok(parts)
}

fn collect(rows: Vec<Result<Entity, StoreError>>) -> Result<Vec<Entity>, StoreError> {
    rows.into_iter().collect()
}

/// Runs `select`, a `SELECT` of every entity column ([`select_entities!`]).
fn query_entities(
    connection: &Connection,
    select: &str,
    values: impl rusqlite::Params,
) -> Result<Vec<Entity>, StoreError> {
    let mut statement = connection.prepare_cached(select).map_err(db_error)?;
    let rows = statement
        .query_map(values, entity_row)
        .map_err(db_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_error)?;
    collect(rows)
}

/// The entity columns a save may change, by the groups of indexes they feed.
#[derive(Clone, Copy)]
struct Changed {
    /// `number`, `order_ref` and the payment references: each has an index keyed on a
    /// provider's random id, so naming them in an UPDATE rewrites a page of each even when the
    /// value stays the same.
    keys: bool,
    linked_to: bool,
}

/// Columns no save changes: an entity's identity and birth.
/// (`sandbox` does not change either, but as the last column it is set again: SQLite counts a
/// statement's parameters up to the highest it names, and every column is bound.)
const FIXED_COLUMNS: [&str; 5] = ["id", "kind", "provider", "provider_id", "created_at"];
const KEY_COLUMNS: [&str; 9] = [
    "number",
    "former_numbers",
    "order_ref",
    "ref_invoice",
    "ref_order",
    "ref_merchant",
    "ref_remark",
    "ref_bill",
    "ref_biller",
];

/// `UPDATE … SET` of the columns `changed` allows, parameters numbered as in
/// [`ENTITY_COLUMNS`] (all 39 are bound; those not named are left unused).
fn update_entity_sql(changed: Changed) -> String {
    let assignments = ENTITY_COLUMNS
        .split(',')
        .map(str::trim)
        .enumerate()
        .filter(|(_, column)| {
            !FIXED_COLUMNS.contains(column)
                && (changed.keys || !KEY_COLUMNS.contains(column))
                && (changed.linked_to || *column != "linked_to")
        })
        .map(|(index, column)| format!("{column} = ?{}", index + 1))
        .collect::<Vec<_>>()
        .join(", ");
    format!("UPDATE ledger_entities SET {assignments} WHERE id = ?1")
}

static INSERT_ENTITY: LazyLock<String> = LazyLock::new(|| {
    let placeholders = (1..=ENTITY_COLUMNS.split(',').count())
        .map(|n| format!("?{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("INSERT INTO ledger_entities ({ENTITY_COLUMNS}) VALUES ({placeholders})")
});

/// Indexed by `keys` then `linked_to`.
static UPDATE_ENTITY: LazyLock<[[String; 2]; 2]> = LazyLock::new(|| {
    [false, true]
        .map(|keys| [false, true].map(|linked_to| update_entity_sql(Changed { keys, linked_to })))
});

/// Writes an entity: a new one (`changed` is `None`) is inserted, a stored one updated.
/// `former_numbers` are those stored, which the lookup table has.
fn save_entity(
    connection: &Connection,
    e: &Entity,
    changed: Option<Changed>,
    former_numbers: &[String],
) -> Result<(), StoreError> {
    let snapshot = e
        .snapshot
        .json()
        .ok_or_else(|| StoreError::Database("a ledger snapshot did not serialize".to_owned()))?;
    let formers = &e.keys.former_numbers;
    let formers_json = (!formers.is_empty())
        .then(|| serde_json::to_string(formers))
        .transpose()
        .map_err(|e| StoreError::Database(format!("former numbers: {e}")))?;
    let sql = match changed {
        None => INSERT_ENTITY.as_str(),
        Some(changed) => {
            UPDATE_ENTITY[usize::from(changed.keys)][usize::from(changed.linked_to)].as_str()
        }
    };
    connection
        .prepare_cached(sql)
        .and_then(|mut statement| {
            statement.execute(params![
                e.id,
                e.kind.as_str(),
                e.provider,
                e.provider_id,
                e.source,
                e.status,
                e.provider_status,
                e.status_precedence.level,
                e.status_precedence.at,
                to_bits(e.status_precedence.tiebreak),
                e.status_settles,
                e.content_precedence.at,
                to_bits(e.content_precedence.tiebreak),
                snapshot,
                e.keys.number,
                e.keys.order_id,
                e.refs.invoice_id,
                e.refs.order_id,
                e.refs.merchant_reference,
                e.refs.remark,
                e.refs.bill_ref_id,
                e.refs.biller_ref_id,
                e.currency.map(|c| c.as_str().to_owned()),
                e.amount.map(|a| a.minor()),
                e.counted.minor(),
                e.paid.minor(),
                e.due.map(|a| a.minor()),
                e.overpaid.minor(),
                e.due_by.map(|t| t.unix_millis()),
                e.linked_to,
                e.link_rule,
                e.settled_event.map(|id| id.to_string()),
                e.settled_at.map(|t| t.unix_millis()),
                e.unmatched_event.map(|id| id.to_string()),
                e.created_at.unix_millis(),
                e.updated_at.unix_millis(),
                e.inbound_id.to_string(),
                formers_json,
                e.sandbox,
            ])
        })
        .map_err(db_error)?;
    if formers.as_slice() != former_numbers {
        save_former_numbers(connection, &e.id, former_numbers, formers)?;
    }
    Ok(())
}

/// Adds the lookup rows of the former numbers in `now` that `stored` lacks. Only added to: a
/// former number that is current again still names the entity.
fn save_former_numbers(
    connection: &Connection,
    entity_id: &str,
    stored: &[String],
    now: &[String],
) -> Result<(), StoreError> {
    let mut statement = connection
        .prepare_cached(
            "INSERT OR IGNORE INTO ledger_former_numbers (number, entity_id) VALUES (?1, ?2)",
        )
        .map_err(db_error)?;
    for number in now.iter().filter(|n| !stored.contains(n)) {
        statement
            .execute([number.as_str(), entity_id])
            .map_err(db_error)?;
    }
    Ok(())
}

/// Inserts a conclusion's event, filed under the entity it concludes about, and its
/// deliveries; returns the event id.
pub(super) fn record_announcement(
    connection: &Connection,
    announcement: &Announcement,
    entity_id: &str,
    provider_id: &str,
) -> Result<EventId, StoreError> {
    let mut filed = EventEntities::default();
    filed.add(
        announcement.event.id,
        entity_id.to_owned(),
        provider_id.to_owned(),
    );
    insert_events(
        connection,
        announcement.inbound_id,
        std::slice::from_ref(&announcement.event),
        &filed,
    )?;
    insert_deliveries(
        connection,
        announcement.inbound_id,
        &announcement.deliveries,
        announcement.planned_at,
    )?;
    Ok(announcement.event.id)
}

/// The ledger tables as seen from inside the writer's transaction.
struct SqliteLedger<'a> {
    connection: &'a Connection,
    concluder: Option<&'a dyn Concluder>,
    /// The indexed, changeable columns of every entity read or written so far, as stored: a
    /// save compares against them to name only the index groups it changes, and inserts the
    /// entities never seen (the rules save only entities they read or just created).
    stored: HashMap<String, StoredKeys>,
}

struct StoredKeys {
    keys: TargetKeys,
    refs: PaymentRefs,
    linked_to: Option<String>,
}

impl StoredKeys {
    fn of(entity: &Entity) -> Self {
        Self {
            keys: entity.keys.clone(),
            refs: entity.refs.clone(),
            linked_to: entity.linked_to.clone(),
        }
    }
}

/// One indexed equality per reference a payment has, each with the kind it may name: a single
/// statement covering every kind of reference cost SQLite a temporary table per `IN` list,
/// whether the payment had that reference or not, about twice the time of these lookups.
fn target_lookups(refs: &PaymentRefs) -> Vec<(&'static str, &str)> {
    const INVOICE_BY_ID: &str = select_entities!("provider_id = ?1 AND kind = 'invoice'");
    const INVOICE_BY_NUMBER: &str = select_entities!(
        "(number = ?1 OR id IN (SELECT entity_id FROM ledger_former_numbers WHERE number = ?1))
         AND +kind = 'invoice'"
    );
    distinct_lookups([
        (INVOICE_BY_ID, refs.invoice_id.as_deref()),
        (INVOICE_BY_ID, refs.merchant_reference.as_deref()),
        (INVOICE_BY_ID, refs.remark.as_deref()),
        (
            select_entities!("order_ref = ?1 AND +kind = 'invoice'"),
            refs.order_id.as_deref(),
        ),
        (INVOICE_BY_NUMBER, refs.merchant_reference.as_deref()),
        (INVOICE_BY_NUMBER, refs.remark.as_deref()),
        (
            select_entities!("provider_id = ?1 AND kind = 'bill'"),
            refs.bill_ref_id.as_deref(),
        ),
        (
            select_entities!(
                "(number = ?1 OR id IN (SELECT entity_id FROM ledger_former_numbers WHERE number = ?1))
                 AND +kind = 'bill'"
            ),
            refs.biller_ref_id.as_deref(),
        ),
    ])
}

/// The other way round: one lookup per payment column that could name `target` by its id or
/// number, for the payments not linked yet.
fn payment_lookups(target: &Entity) -> Vec<(&'static str, &str)> {
    macro_rules! unlinked_payments_by {
        ($column:literal) => {
            select_entities!(concat!(
                $column,
                " = ?1 AND +kind = 'payment' AND +linked_to IS NULL"
            ))
        };
    }
    const INVOICE: &str = unlinked_payments_by!("ref_invoice");
    const ORDER: &str = unlinked_payments_by!("ref_order");
    const MERCHANT: &str = unlinked_payments_by!("ref_merchant");
    const REMARK: &str = unlinked_payments_by!("ref_remark");
    const BILL: &str = unlinked_payments_by!("ref_bill");
    const BILLER: &str = unlinked_payments_by!("ref_biller");
    let id = Some(target.provider_id.as_str());
    let number = target.keys.number.as_deref();
    let mut lookups = match target.kind {
        SubjectKind::Invoice => distinct_lookups([
            (INVOICE, id),
            (ORDER, target.keys.order_id.as_deref()),
            (MERCHANT, id),
            (MERCHANT, number),
            (REMARK, id),
            (REMARK, number),
        ]),
        SubjectKind::Bill => distinct_lookups([(BILL, id), (BILLER, number)]),
        _ => Vec::new(),
    };
    let by_number: &[&'static str] = match target.kind {
        SubjectKind::Invoice => &[MERCHANT, REMARK],
        SubjectKind::Bill => &[BILLER],
        _ => &[],
    };
    for former in &target.keys.former_numbers {
        for select in by_number {
            if !lookups.contains(&(*select, former.as_str())) {
                lookups.push((*select, former.as_str()));
            }
        }
    }
    lookups
}

/// The lookups whose value is present, each (statement, value) once.
fn distinct_lookups<'a, const N: usize>(
    candidates: [(&'static str, Option<&'a str>); N],
) -> Vec<(&'static str, &'a str)> {
    let mut lookups = Vec::with_capacity(N);
    for (condition, value) in candidates {
        if let Some(value) = value
            && !lookups.contains(&(condition, value))
        {
            lookups.push((condition, value));
        }
    }
    lookups
}

/// Runs `lookups` and keeps each entity once, in the order first found.
fn read_each(
    ledger: &mut SqliteLedger<'_>,
    lookups: Vec<(&'static str, &str)>,
) -> Result<Vec<Entity>, StoreError> {
    let mut found: Vec<Entity> = Vec::new();
    for (select, value) in lookups {
        for entity in ledger.read(select, [value])? {
            if !found.iter().any(|seen| seen.id == entity.id) {
                found.push(entity);
            }
        }
    }
    Ok(found)
}

impl SqliteLedger<'_> {
    fn read(
        &mut self,
        select: &str,
        values: impl rusqlite::Params,
    ) -> Result<Vec<Entity>, StoreError> {
        let found = query_entities(self.connection, select, values)?;
        for entity in &found {
            self.stored
                .insert(entity.id.clone(), StoredKeys::of(entity));
        }
        Ok(found)
    }
}

impl LedgerRepo for SqliteLedger<'_> {
    type Error = StoreError;

    async fn entity(
        &mut self,
        kind: SubjectKind,
        provider: &str,
        provider_id: &str,
    ) -> Result<Option<Entity>, StoreError> {
        let found = self.read(
            select_entities!("kind = ?1 AND provider = ?2 AND provider_id = ?3"),
            [kind.as_str(), provider, provider_id],
        )?;
        Ok(found.into_iter().next())
    }

    async fn entity_by_id(&mut self, id: &str) -> Result<Option<Entity>, StoreError> {
        Ok(self
            .read(select_entities!("id = ?1"), [id])?
            .into_iter()
            .next())
    }

    async fn targets_for(&mut self, refs: &PaymentRefs) -> Result<Vec<Entity>, StoreError> {
        read_each(self, target_lookups(refs))
    }

    async fn linkable_payments(&mut self, target: &Entity) -> Result<Vec<Entity>, StoreError> {
        read_each(self, payment_lookups(target))
    }

    async fn linked_payments(&mut self, target: &Entity) -> Result<Vec<Entity>, StoreError> {
        self.read(select_entities!("linked_to = ?1"), [target.id.as_str()])
    }

    async fn save(&mut self, entity: &Entity) -> Result<(), StoreError> {
        let now = StoredKeys::of(entity);
        let before = self.stored.get(&entity.id);
        let changed = before.map(|before| Changed {
            keys: before.keys != now.keys || before.refs != now.refs,
            linked_to: before.linked_to != now.linked_to,
        });
        let former_numbers = before.map_or(&[][..], |b| &b.keys.former_numbers);
        save_entity(self.connection, entity, changed, former_numbers)?;
        self.stored.insert(entity.id.clone(), now);
        Ok(())
    }

    async fn record_history(&mut self, entry: &HistoryEntry) -> Result<(), StoreError> {
        self.connection
            .prepare_cached(
                "INSERT INTO ledger_history (entity_id, event_id, event_type, status,
                    provider_status, level, occurred_at, received_at, applied)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    entry.entity_id,
                    entry.event_id.to_string(),
                    entry.event_type.as_str(),
                    entry.status,
                    entry.provider_status,
                    entry.level,
                    entry.occurred_at.unix_millis(),
                    entry.received_at.unix_millis(),
                    entry.applied,
                ])
            })
            .map_err(db_error)?;
        Ok(())
    }

    async fn conclude(&mut self, conclusion: &Conclusion) -> Result<EventId, StoreError> {
        let Some(concluder) = self.concluder else {
            return Err(StoreError::Database(
                "the ledger reached a conclusion with no concluder".to_owned(),
            ));
        };
        let entity = conclusion.entity();
        record_announcement(
            self.connection,
            &concluder.announce(conclusion),
            &entity.id,
            &entity.provider_id,
        )
    }
}

/// Applies the facts of one ingest (or reprocessing) to the ledger: the conclusions it reached,
/// and the entity each fact's event is about.
pub(super) fn apply_facts(
    connection: &Connection,
    facts: &[Fact],
    concluder: Option<&dyn Concluder>,
) -> Result<(Vec<Concluded>, EventEntities), StoreError> {
    let mut repo = SqliteLedger {
        connection,
        concluder,
        stored: HashMap::new(),
    };
    let mut concluded = Vec::new();
    let mut entities = EventEntities::default();
    for fact in facts {
        let applied = ledger::run_ready(ledger::apply(&mut repo, fact))?;
        if let Some(entity_id) = applied.entity_id {
            entities.add(
                fact.event_id,
                entity_id,
                fact.snapshot.data().provider_id().to_owned(),
            );
        }
        concluded.extend(applied.conclusions);
    }
    Ok((concluded, entities))
}

/// The SQL condition and parameters of a ledger listing.
/// Owed: something is due, or the amount is unknown and no status said it was paid (a Bharat
/// Connect invoice without value details, closed `PAID`, is paid).
const UNPAID: &str = "(due > 0 OR (due IS NULL AND status_settles = 0))";
const PAID: &str = "(due = 0 OR (due IS NULL AND status_settles = 1))";

pub(crate) fn listing_condition(query: &LedgerQuery) -> (String, Vec<SqlValue>) {
    // The kind's range of ids is what the primary key serves the listing by; the kind itself
    // is checked on the rows it finds.
    let (lower, upper) = id_bounds(query.kind);
    let mut clauses = vec!["id > ? AND id < ? AND +kind = ?".to_owned()];
    let mut values = vec![
        SqlValue::Text(lower.to_owned()),
        SqlValue::Text(upper),
        SqlValue::Text(query.kind.as_str().to_owned()),
    ];
    let closed = CLOSED_UNPAID
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    match &query.filter {
        LedgerFilter::All => {}
        LedgerFilter::Outstanding => {
            clauses.push(format!(
                "{UNPAID} AND COALESCE(status, '') NOT IN ({closed})"
            ));
        }
        LedgerFilter::Overdue => {
            clauses.push(format!(
                "{UNPAID} AND COALESCE(status, '') NOT IN ({closed}) AND due_by < ?"
            ));
            values.push(SqlValue::Integer(query.now.unix_millis()));
        }
        LedgerFilter::Paid => clauses.push(PAID.to_owned()),
        LedgerFilter::Unmatched => clauses.push("counted > 0 AND linked_to IS NULL".to_owned()),
        LedgerFilter::Status(status) => {
            clauses.push("status = ?".to_owned());
            values.push(SqlValue::Text(status.clone()));
        }
    }
    for (column, value) in [("provider", &query.provider), ("source", &query.source)] {
        if let Some(value) = value {
            clauses.push(format!("{column} = ?"));
            values.push(SqlValue::Text(value.clone()));
        }
    }
    if let Some(reference) = &query.reference {
        clauses.push(
            "(provider_id = ? OR number = ?
              OR id IN (SELECT entity_id FROM ledger_former_numbers WHERE number = ?))"
                .to_owned(),
        );
        for _ in 0..3 {
            values.push(SqlValue::Text(reference.clone()));
        }
    }
    if let Some(before) = &query.before {
        clauses.push("id < ?".to_owned());
        values.push(SqlValue::Text(before.clone()));
    }
    (clauses.join(" AND "), values)
}

impl SqliteStore {
    pub(crate) async fn ledger_entities(
        &self,
        query: LedgerQuery,
    ) -> Result<Page<Entity>, StoreError> {
        self.read(move |connection| {
            let limit = clamp_limit(query.limit);
            let (condition, values) = listing_condition(&query);
            let mut items = query_entities(
                connection,
                &select_entities_where(&format!(
                    "{condition} ORDER BY id DESC LIMIT {}",
                    limit + 1
                )),
                params_from_iter(values),
            )?;
            Ok(paginate(&mut items, limit, |e| e.id.clone()))
        })
        .await
    }

    pub(crate) async fn ledger_listing_exceeds(
        &self,
        query: LedgerQuery,
        rows: u64,
    ) -> Result<bool, StoreError> {
        self.read(move |connection| {
            let (condition, values) = listing_condition(&query);
            connection
                .prepare_cached(&format!(
                    "SELECT EXISTS (SELECT 1 FROM ledger_entities WHERE {condition}
                        ORDER BY id DESC LIMIT 1 OFFSET {rows})"
                ))
                .and_then(|mut statement| {
                    statement.query_row(params_from_iter(values), |row| row.get::<_, bool>(0))
                })
                .map_err(db_error)
        })
        .await
    }

    pub(crate) async fn ledger_entity(&self, id: String) -> Result<Option<Entity>, StoreError> {
        self.read(move |connection| {
            Ok(
                query_entities(connection, select_entities!("id = ?1"), [id])?
                    .into_iter()
                    .next(),
            )
        })
        .await
    }

    pub(crate) async fn ledger_linked(&self, id: String) -> Result<Vec<Entity>, StoreError> {
        self.read(move |connection| {
            query_entities(
                connection,
                select_entities!("linked_to = ?1 ORDER BY id"),
                [id],
            )
        })
        .await
    }

    pub(crate) async fn ledger_history(&self, id: String) -> Result<Vec<HistoryEntry>, StoreError> {
        self.read(move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT entity_id, event_id, event_type, status, provider_status, level,
                        occurred_at, received_at, applied
                     FROM ledger_history WHERE entity_id = ?1 ORDER BY seq",
                )
                .map_err(db_error)?;
            let rows = statement
                .query_map([id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, Option<i32>>(5)?,
                        row.get::<_, i64>(6)?,
                        row.get::<_, i64>(7)?,
                        row.get::<_, bool>(8)?,
                    ))
                })
                .map_err(db_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_error)?;
            rows.into_iter()
                .map(|r| {
                    Ok(HistoryEntry {
                        entity_id: r.0,
                        event_id: parse_id(&r.1)?,
                        event_type: r
                            .2
                            .parse::<EventType>()
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        status: r.3,
                        provider_status: r.4,
                        level: r.5,
                        occurred_at: Timestamp::from_unix_millis(r.6),
                        received_at: Timestamp::from_unix_millis(r.7),
                        applied: r.8,
                    })
                })
                .collect()
        })
        .await
    }

    /// Succeeded payments created before `before` that match nothing and were not announced.
    pub(crate) async fn unmatched_payments(
        &self,
        before: Timestamp,
        limit: u32,
    ) -> Result<Vec<Entity>, StoreError> {
        self.read(move |connection| {
            query_entities(
                connection,
                &select_entities_where(&format!(
                    "kind = 'payment' AND counted > 0 AND linked_to IS NULL AND unmatched_event IS NULL
                     AND created_at <= ?1 ORDER BY id LIMIT {limit}"
                )),
                [before.unix_millis()],
            )
        })
        .await
    }

    /// Announces an unmatched payment, unless it was matched or announced meanwhile.
    pub(crate) async fn record_unmatched(
        &self,
        payment_id: String,
        announcement: Announcement,
    ) -> Result<bool, StoreError> {
        self.write(move |connection| {
            let still: Option<String> = connection
                .prepare_cached(
                    "SELECT provider_id FROM ledger_entities
                     WHERE id = ?1 AND counted > 0 AND linked_to IS NULL
                       AND unmatched_event IS NULL",
                )
                .and_then(|mut s| s.query_row([&payment_id], |row| row.get(0)).optional())
                .map_err(db_error)?;
            let Some(provider_id) = still else {
                return Ok(false);
            };
            let event = record_announcement(connection, &announcement, &payment_id, &provider_id)?;
            connection
                .prepare_cached("UPDATE ledger_entities SET unmatched_event = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![payment_id, event.to_string()]))
                .map_err(db_error)?;
            Ok(true)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LedgerFilter, LedgerQuery};
    use billhook_core::entity::SubjectKind;

    /// SQLite keeps no statistics here (no `ANALYZE`), so a listing by reference is planned by
    /// heuristics alone: it must look the reference up in its two indexes, not walk the kind's
    /// range of ids checking every row, whatever other filters come with it.
    #[tokio::test]
    async fn a_listing_by_reference_looks_the_reference_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("billhook.db"), None)
            .await
            .expect("open");
        let filters = [
            LedgerFilter::All,
            LedgerFilter::Outstanding,
            LedgerFilter::Overdue,
            LedgerFilter::Paid,
            LedgerFilter::Unmatched,
            LedgerFilter::Status("paid".to_owned()),
        ];
        for filter in filters {
            for (provider, before) in [(None, None), (Some("razorpay"), Some("iv_01K"))] {
                let query = LedgerQuery {
                    kind: SubjectKind::Invoice,
                    filter: filter.clone(),
                    provider: provider.map(str::to_owned),
                    source: provider.map(str::to_owned),
                    reference: Some("INV-7".to_owned()),
                    before: before.map(str::to_owned),
                    limit: 50,
                    now: Timestamp::now(),
                };
                let plan = store
                    .read(move |connection| {
                        let (condition, values) = listing_condition(&query);
                        let sql = select_entities_where(&format!(
                            "{condition} ORDER BY id DESC LIMIT 51"
                        ));
                        let mut statement = connection
                            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                            .map_err(db_error)?;
                        let details = statement
                            .query_map(params_from_iter(values), |row| row.get::<_, String>(3))
                            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
                            .map_err(db_error)?;
                        Ok(details.join("\n"))
                    })
                    .await
                    .expect("plan");
                assert!(
                    plan.contains("(provider_id=?)") && plan.contains("(number=?)"),
                    "{filter:?}, provider {provider:?}, before {before:?}:\n{plan}"
                );
                assert!(!plan.contains("SCAN"), "{filter:?}:\n{plan}");
            }
        }
    }
}
