-- Events found by subject through the ledger. An index on the provider's subject id put every
-- new event on a random page, about one WAL frame in nine. An event about an entity the ledger
-- keeps now names that entity (billhook's id, which sorts by when the entity was first seen),
-- so its index entry lands where the other recent entities' are; a listing by subject finds the
-- entities by the provider's id, then their events. Events about anything else keep the index
-- on the subject, and so do the events stored before this migration: filing them too would
-- rewrite every stored event, for no change in what a listing finds.
ALTER TABLE events ADD COLUMN entity_id TEXT;
DROP INDEX events_by_subject;
CREATE INDEX events_by_subject ON events (subject_id, id) WHERE entity_id IS NULL;
CREATE INDEX events_by_entity ON events (entity_id, id) WHERE entity_id IS NOT NULL;
