-- An entity's id starts with its kind (iv_, py_, bl_, …), so a listing by kind is a range of the
-- primary key. The (kind, id) index only repeated that, and every commit paid for it: a page for
-- each kind that gained an entity, about one WAL frame in thirty.
DROP INDEX ledger_by_kind;
