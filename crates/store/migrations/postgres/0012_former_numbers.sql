-- Every number an invoice or bill had besides its current one (an invoice renumbered, an edit
-- whose snapshot a ranked status hides), as a JSON array, indexed by its elements. In the row
-- itself, not a table of its own, so that a lookup that waited for the row's lock judges the
-- numbers the row has after that lock's holder commits. Entries stored before keep their
-- current number only.
ALTER TABLE ledger_entities ADD COLUMN former_numbers TEXT COLLATE "C";

CREATE INDEX ledger_by_former_number ON ledger_entities USING gin ((former_numbers::jsonb))
    WHERE former_numbers IS NOT NULL;
