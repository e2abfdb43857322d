-- Lean ledger indexes: an entity's reference columns are mostly empty, so index only the rows
-- that have a value. Every entity write then touches the few indexes it needs instead of all.
DROP INDEX ledger_by_linked;
CREATE INDEX ledger_by_linked ON ledger_entities (linked_to) WHERE linked_to IS NOT NULL;
DROP INDEX ledger_by_number;
CREATE INDEX ledger_by_number ON ledger_entities (number) WHERE number IS NOT NULL;
DROP INDEX ledger_by_order;
CREATE INDEX ledger_by_order ON ledger_entities (order_ref) WHERE order_ref IS NOT NULL;
DROP INDEX ledger_by_ref_invoice;
CREATE INDEX ledger_by_ref_invoice ON ledger_entities (ref_invoice) WHERE ref_invoice IS NOT NULL;
DROP INDEX ledger_by_ref_order;
CREATE INDEX ledger_by_ref_order ON ledger_entities (ref_order) WHERE ref_order IS NOT NULL;
DROP INDEX ledger_by_ref_merchant;
CREATE INDEX ledger_by_ref_merchant ON ledger_entities (ref_merchant) WHERE ref_merchant IS NOT NULL;
DROP INDEX ledger_by_ref_remark;
CREATE INDEX ledger_by_ref_remark ON ledger_entities (ref_remark) WHERE ref_remark IS NOT NULL;
DROP INDEX ledger_by_ref_bill;
CREATE INDEX ledger_by_ref_bill ON ledger_entities (ref_bill) WHERE ref_bill IS NOT NULL;
DROP INDEX ledger_by_ref_biller;
CREATE INDEX ledger_by_ref_biller ON ledger_entities (ref_biller) WHERE ref_biller IS NOT NULL;
