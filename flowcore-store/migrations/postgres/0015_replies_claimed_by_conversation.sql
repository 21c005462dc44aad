-- flowcore-store schema v15 (PostgreSQL): whether a unit's replies are claimed as they are
-- written is decided by looking at their conversation's replies only.
--
-- A reply is claimed as it is written when its conversation has no unfinished reply stored
-- (migration 6). That test was a `NOT EXISTS` correlated by equality alone, which the
-- planner may run as a hashed subplan: every unfinished reply of the whole outbox read once
-- per call to build the hash. Under the server load bench that was 150 to 390 rows a call;
-- with 50,000 replies waiting (Meta down or pacing a number), 18 ms a call instead of
-- 0.06 ms, paid by every turn's commit exactly when the outbox is backed up. As a scalar
-- subquery (`(SELECT 1 ... LIMIT 1) IS NULL`, as the claims have been since migration 3) it
-- is one probe of `outbox_open_conversation` per reply.
--
-- Only that test changes, so the function is patched in place, as in migration 14: read
-- back with `pg_get_functiondef`, the test rewritten, the result run. A test not found
-- exactly once stops the migration.
DO $do$
DECLARE
    target regprocedure;
    definition text;
    old_test constant text :=
        'x\.cl IS NOT NULL\s+AND NOT EXISTS \(SELECT 1 FROM outbox e(\s+WHERE e\.contact_id = x\.ct'
        || ' AND e\.business_number_id = x\.bn AND e\.org_id = x\.org\s+AND e\.status IN \(''pending'', ''claimed''\))\)'
        || ' AS claimed';
    new_test constant text := 'x.cl IS NOT NULL AND (SELECT 1 FROM outbox e\1 LIMIT 1) IS NULL AS claimed';
BEGIN
    SELECT p.oid::regprocedure INTO target
    FROM pg_proc p
    WHERE p.proname = 'flowcore_commit_units' AND p.pronamespace = current_schema()::regnamespace;
    IF target IS NULL THEN
        RAISE EXCEPTION 'migration 15: flowcore_commit_units is missing';
    END IF;
    definition := pg_get_functiondef(target);
    -- Counted with `regexp_matches`, not `regexp_count`, which needs PostgreSQL 15.
    IF (SELECT count(*) FROM regexp_matches(definition, old_test, 'g')) <> 1 THEN
        RAISE EXCEPTION 'migration 15: % does not hold its replies'' claim test exactly once', target;
    END IF;
    EXECUTE regexp_replace(definition, old_test, new_test);
END
$do$;
