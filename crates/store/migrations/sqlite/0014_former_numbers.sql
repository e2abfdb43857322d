-- Every number an invoice or bill had besides its current one (an invoice renumbered, an edit
-- whose snapshot a ranked status hides): a JSON array on the entry, and one row each where a
-- payment's reference is looked up. Entries stored before keep their current number only.
ALTER TABLE ledger_entities ADD COLUMN former_numbers TEXT;

CREATE TABLE ledger_former_numbers (
    number    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    PRIMARY KEY (number, entity_id)
) WITHOUT ROWID;
