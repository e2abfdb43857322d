-- Events found by subject through the ledger. An index on the provider's subject id put every
-- new event on a random page, about one WAL frame in nine. An event about an entity the ledger
-- keeps now names that entity (billhook's id, which sorts by when the entity was first seen),
-- so its index entry lands where the other recent entities' are; a listing by subject finds the
-- entities by the provider's id, then their events. Events about anything else keep the index
-- on the subject.
ALTER TABLE events ADD COLUMN entity_id TEXT;
UPDATE events SET entity_id = h.entity_id
    FROM ledger_history h JOIN ledger_entities e ON e.id = h.entity_id
    WHERE h.event_id = events.id AND e.provider_id = events.subject_id;
UPDATE events SET entity_id = e.id
    FROM ledger_entities e
    WHERE e.settled_event = events.id AND e.provider_id = events.subject_id;
UPDATE events SET entity_id = e.id
    FROM ledger_entities e
    WHERE e.unmatched_event = events.id AND e.provider_id = events.subject_id;
DROP INDEX events_by_subject;
CREATE INDEX events_by_subject ON events (subject_id, id) WHERE entity_id IS NULL;
CREATE INDEX events_by_entity ON events (entity_id, id) WHERE entity_id IS NOT NULL;
