-- Every number an invoice or bill had besides its current one (an invoice renumbered, an edit
-- whose snapshot a ranked status hides), as a JSON array, indexed by its elements. In the row
-- itself, not a table of its own, so that a lookup that waited for the row's lock judges the
-- numbers the row has after that lock's holder commits. Entries stored before keep their
-- current number only.
ALTER TABLE ledger_entities ADD COLUMN former_numbers TEXT COLLATE "C";

CREATE INDEX ledger_by_former_number ON ledger_entities USING gin ((former_numbers::jsonb))
    WHERE former_numbers IS NOT NULL;

-- Without statistics the planner takes the new column to be rarely null, and a listing by
-- reference, which tests it, to match many rows: it would walk the kind's ids instead of the
-- reference's indexes. Analyzed here, so the column is known to be null from the start.
ANALYZE ledger_entities (former_numbers);
