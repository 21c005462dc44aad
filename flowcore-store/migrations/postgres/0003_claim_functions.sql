-- flowcore-store schema v3 (PostgreSQL): claims as functions that walk the heads in order.
--
-- Claims walk the heads (`inbox_heads`, `outbox_heads`) in `(due_at, id)` order and take
-- those whose turn it is: due, not waiting for a retry, not out under a live lease, nothing
-- of their conversation before them (a head can be stale: an earlier row was inserted after
-- it) and no other row of their conversation out under a live lease. Each check is one index
-- probe, so a claim should cost about the number of heads it passes, not the backlog.
--
-- As a plain statement it did not: estimating a handful of heads, the planner read every
-- head through a bitmap scan, ran both checks on each and sorted them, to keep the first few
-- (1.5 ms for 8 rows of 190 heads under the server load bench). A bitmap scan also never
-- marks the index entries of finished heads as dead, so every claim visited the heap for
-- each of them again (3,400 buffers). Walking the index in order stops at the limit and
-- marks what it found dead, so the next claim skips it: the functions' SET clauses rule the
-- bitmap scan and the sort out.
--
-- The checks are scalar subqueries, not `NOT EXISTS`: PostgreSQL turns those into anti
-- joins, and without statistics (a new table, or a server with autovacuum off) it joined
-- every head with every open row of the organization: 35 s for one claim of 1,000 rows over
-- a backlog of 12,000. A scalar subquery stays a per-row probe of the conversation index.
--
-- One text for both queues. Parameters: $1 now, $2 the organization (NULL: any), $3 the limit, $4 the lease's end.

DO $do$
DECLARE
    queue text;
BEGIN
    FOREACH queue IN ARRAY ARRAY['inbox', 'outbox'] LOOP
        EXECUTE format($sql$
        CREATE OR REPLACE FUNCTION flowcore_claim_%1$s(int8, text, int8, int8)
        RETURNS SETOF %1$I LANGUAGE plpgsql
        SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off
        AS $fn$
        BEGIN
            -- A claim need not wait for its WAL flush: lost in a crash, it only leaves the
            -- row as it was (unclaimed, claimed again later). Whatever is done under it is
            -- committed later, synchronously, and that flush takes this claim along.
            PERFORM set_config('synchronous_commit', 'off', true);
            RETURN QUERY
            UPDATE %1$I SET status = 'claimed', attempts = attempts + 1, lease_until = $4
            WHERE id IN (
              SELECT i.id FROM %1$I i
              WHERE i.head AND i.status IN ('pending', 'claimed') AND i.due_at <= $1 AND ($2::text IS NULL OR i.org_id = $2)
                AND ((i.status = 'pending' AND (i.retry_at IS NULL OR i.retry_at <= $1))
                     OR (i.status = 'claimed' AND i.lease_until < $1))
                AND i.id = (
                  SELECT j.id FROM %1$I j
                  WHERE j.contact_id = i.contact_id AND j.business_number_id = i.business_number_id AND j.org_id = i.org_id
                    AND j.status IN ('pending', 'claimed')
                  ORDER BY j.due_at, j.id LIMIT 1)
                AND (
                  SELECT 1 FROM %1$I j
                  WHERE j.contact_id = i.contact_id AND j.business_number_id = i.business_number_id AND j.org_id = i.org_id
                    AND j.status = 'claimed' AND j.lease_until >= $1 AND j.id <> i.id
                  LIMIT 1) IS NULL
              ORDER BY i.due_at, i.id
              LIMIT $3
              FOR UPDATE OF i SKIP LOCKED)
            RETURNING %1$I.*;
        END
        $fn$;
        $sql$, queue);
    END LOOP;
END
$do$;
