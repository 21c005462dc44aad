-- flowcore-store schema v10 (PostgreSQL): a conversation's recent inbound messages, by time.
--
-- A per-contact rate limit counts the messages a contact sent in the last minute. Read from
-- the shared log, that count holds across every server instance and across restarts; this
-- index makes it a short range read of that contact's latest inbound entries instead of a
-- walk through the conversation's whole history. Partial: only inbound entries (about a
-- third of the log) pay for it.
CREATE INDEX IF NOT EXISTS message_log_inbound
    ON message_log (org_id, business_number_id, contact_id, at) WHERE direction = 'in';
