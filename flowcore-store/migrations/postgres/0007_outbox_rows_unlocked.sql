-- flowcore-store schema v7 (PostgreSQL): finishing replies takes no row locks of its own.
--
-- `flowcore_lock_conversations` row-locked the outbox rows it was given, as it does the
-- inbox rows: a lock is a WAL record and a dirtied page per row, and a sent reply's row is
-- updated right after anyway. The inbox rows' locks are what inbox inserts skip when they
-- look for an earlier row to lean on (see `flowcore_insert_inbox_row`); nothing looks at
-- the outbox rows' locks, and a row's conversation never changes, so reading it is enough.
CREATE OR REPLACE FUNCTION flowcore_lock_conversations(
    p_space int4, p_inbox_ids int8[], p_outbox_ids int8[], p_orgs text[], p_numbers text[], p_contacts text[])
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock(p_space, k) FROM (
        WITH finishing_inbox AS (
                 SELECT org_id, business_number_id, contact_id FROM inbox WHERE id = ANY(p_inbox_ids)
                 FOR NO KEY UPDATE),
             finishing_outbox AS (
                 SELECT org_id, business_number_id, contact_id FROM outbox WHERE id = ANY(p_outbox_ids))
        SELECT DISTINCT hashtext(org_id || chr(31) || business_number_id || chr(31) || contact_id) AS k FROM (
            SELECT * FROM finishing_inbox
            UNION ALL SELECT * FROM finishing_outbox
            UNION ALL SELECT * FROM unnest(p_orgs, p_numbers, p_contacts)
        ) AS conversation (org_id, business_number_id, contact_id)
    ) AS keys ORDER BY k;
END
$fn$;
