-- The held and the dead deliveries of each endpoint. A deleted endpoint's held deliveries
-- are cancelled a batch at a time through the first, and a deletion whose cancelling was cut
-- short is found again at start; an endpoint's held or dead deliveries are listed through
-- them, not by reading past all it delivered. Only such rows are in them: ingest and a
-- delivery that succeeds never touch them.
CREATE INDEX deliveries_held ON deliveries (endpoint_id, id) WHERE status = 'held';
CREATE INDEX deliveries_dead ON deliveries (endpoint_id, id) WHERE status = 'dead';
