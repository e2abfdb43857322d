-- An entity's id starts with its kind (iv_, py_, bl_, …), so a listing by kind is a range of the
-- primary key. The (kind, id) index only repeated that, at the cost of an index entry for every
-- new entity.
DROP INDEX ledger_by_kind;
