-- flowcore-store schema v11 (PostgreSQL): a conversation's next inbound event waits while
-- one of its replies is out with a sender.
--
-- A unit of work claims its replies for the caller only when their conversation has no
-- unfinished reply (migration 6). Under a backlog, the next turn of a conversation could
-- commit before the sender had marked the previous reply sent: its replies were then
-- written pending, claimed later in calls of their own, their heads handed on one by one.
-- Those later sends took longer, so the turn after them found a reply unfinished too: once
-- a conversation fell into that mode, it stayed there. Under the server load bench, with
-- 48 workers an instance, 18,000 of 20,000 replies went that way, and PostgreSQL's time per
-- message grew by a third.
--
-- Claims now pass over an inbox head while a reply of its conversation is claimed under a
-- live lease: the turn runs once that reply is sent (or its lease runs out), and its own
-- replies are claimed as they are written. A reply waiting for a retry does not hold the
-- conversation back. Otherwise the claim is migration 3's.
CREATE OR REPLACE FUNCTION flowcore_claim_inbox(int8, text, int8, int8)
RETURNS SETOF inbox LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off
AS $fn$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    UPDATE inbox SET status = 'claimed', attempts = attempts + 1, lease_until = $4
    WHERE id IN (
      SELECT i.id FROM inbox i
      WHERE i.head AND i.status IN ('pending', 'claimed') AND i.due_at <= $1 AND ($2::text IS NULL OR i.org_id = $2)
        AND ((i.status = 'pending' AND (i.retry_at IS NULL OR i.retry_at <= $1))
             OR (i.status = 'claimed' AND i.lease_until < $1))
        AND i.id = (
          SELECT j.id FROM inbox j
          WHERE j.contact_id = i.contact_id AND j.business_number_id = i.business_number_id AND j.org_id = i.org_id
            AND j.status IN ('pending', 'claimed')
          ORDER BY j.due_at, j.id LIMIT 1)
        AND (
          SELECT 1 FROM inbox j
          WHERE j.contact_id = i.contact_id AND j.business_number_id = i.business_number_id AND j.org_id = i.org_id
            AND j.status = 'claimed' AND j.lease_until >= $1 AND j.id <> i.id
          LIMIT 1) IS NULL
        AND (
          SELECT 1 FROM outbox o
          WHERE o.contact_id = i.contact_id AND o.business_number_id = i.business_number_id AND o.org_id = i.org_id
            AND o.status = 'claimed' AND o.lease_until >= $1
          LIMIT 1) IS NULL
      ORDER BY i.due_at, i.id
      LIMIT $3
      FOR UPDATE OF i SKIP LOCKED)
    RETURNING inbox.*;
END
$fn$;
