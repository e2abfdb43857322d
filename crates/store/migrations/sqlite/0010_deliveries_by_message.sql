-- An event's deliveries are found among its message's (`deliveries_by_inbound`): a message has
-- a few events, each a few deliveries, so the event's own index only repeated that, and every
-- delivery paid for it when inserted.
DROP INDEX deliveries_by_event;
