-- flowcore-store schema v5 (PostgreSQL): the inbox's message key leads with the message id.
--
-- The functions' statements are planned once per connection, on its first call, from the
-- tables as they are then (often nearly empty, and without statistics when autovacuum is
-- off). With `UNIQUE (org_id, message_id)`, a lookup of a conversation's next unfinished row
-- (organization, number and contact given) could be planned through that key's organization
-- prefix, then sorted: every row the organization ever received, for each finished row.
-- Under the load bench, some connections planned it so and read 58,000 buffers per
-- `flowcore_commit_units` call: a third of the throughput. Led by the message id, the key
-- serves only lookups by message id, and the conversation index (contact first) is the one
-- way in by conversation.
ALTER TABLE inbox ADD CONSTRAINT inbox_message_org_key UNIQUE (message_id, org_id);
ALTER TABLE inbox DROP CONSTRAINT IF EXISTS inbox_org_id_message_id_key;
