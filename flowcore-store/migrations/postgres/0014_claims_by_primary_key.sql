-- flowcore-store schema v14 (PostgreSQL): the claim changes find their rows by primary key.
--
-- The claim changes (replies sent, inbox rows done, failed or retried) find their rows with
-- `id = ANY(p_id) AND ... AND status = 'claimed'`. A function's plan is made once per
-- connection, often on nearly empty tables, and the status condition let the planner read
-- the rows off the partial index of claimed rows (`inbox_claimed`, `outbox_claimed`)
-- instead: every claimed row, and every dead entry of one not yet cleaned up, for each call
-- (34 index entries a call for the replies sent under the server load bench). Written as a
-- `CASE`, the status test no longer matches the index's predicate, so the primary key is the
-- only way in. Migration 13 does the same for the units' call.
--
-- Only that condition changes, so the functions are patched in place rather than restated:
-- each is read back with `pg_get_functiondef`, the one condition replaced, and the result
-- run. A condition not found exactly once stops the migration.
DO $do$
DECLARE
    patch record;
    definition text;
BEGIN
    FOR patch IN
        SELECT p.oid::regprocedure AS function, x.old, x.new
        FROM (VALUES
                  ('flowcore_finish_inbox_rows', 'AND q.org_id = c.org AND q.status = ''claimed''',
                   'AND q.org_id = c.org AND CASE WHEN q.status = ''claimed'' THEN true END'),
                  ('flowcore_finish_outbox_rows', 'AND q.org_id = c.org AND q.status = ''claimed''',
                   'AND q.org_id = c.org AND CASE WHEN q.status = ''claimed'' THEN true END'))
             AS x (name, old, new)
        JOIN pg_proc p ON p.proname = x.name AND p.pronamespace = current_schema()::regnamespace
    LOOP
        definition := pg_get_functiondef(patch.function);
        IF array_length(string_to_array(definition, patch.old), 1) <> 2 THEN
            RAISE EXCEPTION 'migration 14: % does not hold its condition exactly once', patch.function;
        END IF;
        EXECUTE replace(definition, patch.old, patch.new);
    END LOOP;
    IF (SELECT count(*) FROM pg_proc
        WHERE proname IN ('flowcore_finish_inbox_rows', 'flowcore_finish_outbox_rows')
          AND pronamespace = current_schema()::regnamespace) <> 2 THEN
        RAISE EXCEPTION 'migration 14: a function to patch is missing';
    END IF;
END
$do$;
