-- The held deliveries of each endpoint. A deleted endpoint's are cancelled a batch at a time
-- through it, and a deletion whose cancelling was cut short is found again at start; an
-- endpoint's held deliveries are listed through it. Only held rows are in it: ingest and
-- delivery, which write no held row, never touch it.
CREATE INDEX deliveries_held ON deliveries (endpoint_id, id) WHERE status = 'held';
