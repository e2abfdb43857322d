-- One index for an entity's identity instead of two: the unique key on
-- (kind, provider, provider_id) and the index on provider_id for lookups by the provider's id
-- alone become one unique key led by provider_id, which serves both. Both were keyed on a
-- provider's random id, so every new entity dirtied a leaf of each.
ALTER TABLE ledger_entities DROP CONSTRAINT ledger_entities_kind_provider_provider_id_key;
ALTER TABLE ledger_entities ADD CONSTRAINT ledger_entities_identity
    UNIQUE (provider_id, kind, provider);
DROP INDEX ledger_by_provider_id;
