-- flowcore-store schema v8 (PostgreSQL): a batch's inbox inserts and claim changes as one
-- statement each, not one per row.
--
-- `flowcore_write_rows` (migration 4) ran a statement, and a function call with its SET
-- clauses, for every row: under the server load bench a statement start and a settings
-- switch for each webhook and each sent reply, most of the call's time. Here each kind of
-- row is one statement for the whole batch. What the rows of a batch see of each other is
-- what they saw when each was its own statement, in the given order:
--
-- * an insert after another new row of its conversation (due no later) is not its head;
-- * a message given twice is inserted once, the second answered as a duplicate;
-- * a change given twice for one row applies once, the second is refused (as it was: the
--   first had taken the row out of `claimed`);
-- * a conversation whose rows leave the queue hands its head to its first unfinished row
--   after all of them.
--
-- The rows a statement changes are found by `id = ANY(...)`, never by a join: a connection
-- plans these once, often on nearly empty tables, and a join planned there may read the
-- whole queue (under the bench the head hand-off did: 11 ms and 11,000 buffers a call).

-- Inserts the rows whose message ids are not in the inbox yet and tells, in the given order,
-- each row's id and whether it is new. Like `flowcore_insert_inbox_row` (migration 4), it
-- takes no conversation lock: each new row share-locks one earlier unfinished row of its
-- conversation, skipping locked ones, and is a head when it finds none.
CREATE OR REPLACE FUNCTION flowcore_insert_inbox_rows(
    p_org text[], p_number text[], p_contact text[], p_message text[], p_kind text[], p_payload text[],
    p_received int8[], p_due int8[], OUT ids int8[], OUT is_new boolean[])
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $fn$
DECLARE
    new_ids int8[];
    new_positions int8[];
    fresh_count int8;
BEGIN
    WITH batch AS (
             SELECT * FROM unnest(p_org, p_number, p_contact, p_message, p_kind, p_payload, p_received, p_due)
                      WITH ORDINALITY AS x (org, bn, ct, msg, kind, pl, recv, due, n)),
         -- Each message's first row in the batch, unless it is stored already.
         fresh AS MATERIALIZED (
             SELECT DISTINCT ON (b.msg, b.org) b.* FROM batch b
             WHERE (SELECT i.id FROM inbox i WHERE i.message_id = b.msg AND i.org_id = b.org) IS NULL
             ORDER BY b.msg, b.org, b.n),
         leaning AS MATERIALIZED (
             SELECT f.n FROM fresh f,
                    LATERAL (SELECT e.id FROM inbox e
                             WHERE e.contact_id = f.ct AND e.business_number_id = f.bn AND e.org_id = f.org
                               AND e.status IN ('pending', 'claimed') AND e.due_at <= f.due
                             LIMIT 1 FOR SHARE OF e SKIP LOCKED) AS e),
         inserted AS (
             INSERT INTO inbox (org_id, business_number_id, contact_id, message_id, kind, payload, received_at, due_at,
                                status, head)
             SELECT f.org, f.bn, f.ct, f.msg, f.kind, f.pl, f.recv, f.due, 'pending',
                    f.n <> ALL(ARRAY(SELECT l.n FROM leaning l))
                    AND NOT EXISTS (SELECT 1 FROM fresh g
                                    WHERE g.ct = f.ct AND g.bn = f.bn AND g.org = f.org AND g.due <= f.due
                                      AND g.n < f.n)
             FROM fresh f ORDER BY f.n
             ON CONFLICT (message_id, org_id) DO NOTHING
             RETURNING inbox.id, inbox.message_id, inbox.org_id)
    SELECT array_agg(i.id), array_agg(f.n), (SELECT count(*) FROM fresh)
    INTO new_ids, new_positions, fresh_count
    FROM inserted i JOIN fresh f ON f.msg = i.message_id AND f.org = i.org_id;
    IF coalesce(cardinality(new_ids), 0) < fresh_count THEN
        -- Another transaction inserted one of these messages meanwhile. A row that took it
        -- for an earlier new row of its conversation may have no head before it: mark the
        -- first new row of each conversation concerned (a stale mark at worst, which
        -- claims check).
        UPDATE inbox SET head = true
        WHERE inbox.id = ANY(ARRAY(
            SELECT DISTINCT ON (x.org, x.bn, x.ct) w.id
            FROM unnest(new_ids, new_positions) AS w (id, n)
            JOIN unnest(p_org, p_number, p_contact, p_due) WITH ORDINALITY AS x (org, bn, ct, due, n) ON x.n = w.n
            ORDER BY x.org, x.bn, x.ct, x.due, x.n))
          AND NOT inbox.head;
    END IF;
    -- A new statement: it sees the rows inserted meanwhile by others, and the ones above.
    SELECT array_agg(COALESCE(w.id, (SELECT i.id FROM inbox i WHERE i.message_id = b.msg AND i.org_id = b.org))
                     ORDER BY b.n),
           array_agg(w.id IS NOT NULL ORDER BY b.n)
    INTO ids, is_new
    FROM unnest(p_message, p_org) WITH ORDINALITY AS b (msg, org, n)
    LEFT JOIN unnest(new_ids, new_positions) AS w (id, n) ON w.n = b.n;
END
$fn$;

-- Applies the changes of one queue (the rows whose `p_outbox` is the queue's) whose claims
-- still hold, and hands each conversation whose rows leave the queue its head. Answers, for
-- every given row, whether its claim held: NULL for the other queue's rows.
--
-- p_change: 'done' (inbox), 'sent' (outbox: p_text the wamid), 'retry' (p_time the retry
-- time, p_text the error) or 'failed' (p_text the error). p_time is the time of the change.
DO $do$
DECLARE
    queue text;
    sent_columns text;
BEGIN
    FOREACH queue IN ARRAY ARRAY['inbox', 'outbox'] LOOP
        sent_columns := CASE queue WHEN 'outbox' THEN $cols$,
                    sent_at = CASE WHEN c.change = 'sent' THEN c.at ELSE q.sent_at END,
                    wamid = CASE WHEN c.change = 'sent' THEN c.txt ELSE q.wamid END,
                    delivery = CASE WHEN c.change = 'sent' AND q.delivery_rank < 1 THEN 'sent' ELSE q.delivery END,
                    delivery_at = CASE WHEN c.change = 'sent' AND q.delivery_rank < 1 THEN c.at ELSE q.delivery_at END,
                    delivery_rank = CASE WHEN c.change = 'sent' THEN GREATEST(q.delivery_rank, 1)
                                         ELSE q.delivery_rank END$cols$
            ELSE '' END;
        EXECUTE format($sql$
        CREATE OR REPLACE FUNCTION flowcore_finish_%1$s_rows(
            p_outbox boolean[], p_change text[], p_org text[], p_id int8[], p_attempt int8[], p_time int8[],
            p_text text[])
        RETURNS boolean[]
        LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $fn$
        DECLARE
            held boolean[];
            leaving_orgs text[];
            leaving_numbers text[];
            leaving_contacts text[];
        BEGIN
            WITH changes AS (
                     SELECT DISTINCT ON (x.id) x.*
                     FROM unnest(p_outbox, p_change, p_org, p_id, p_attempt, p_time, p_text)
                          WITH ORDINALITY AS x (outbox, change, org, id, attempt, at, txt, n)
                     WHERE x.outbox = %3$L
                     ORDER BY x.id, x.n),
                 changed AS (
                     UPDATE %1$I q SET
                         status = CASE c.change WHEN 'retry' THEN 'pending' WHEN 'failed' THEN 'failed' ELSE 'done' END,
                         lease_until = NULL,
                         finished_at = CASE WHEN c.change <> 'retry' THEN c.at ELSE q.finished_at END,
                         retry_at = CASE WHEN c.change = 'retry' THEN c.at ELSE q.retry_at END,
                         last_error = CASE WHEN c.change IN ('retry', 'failed') THEN c.txt ELSE q.last_error END%2$s
                     FROM changes c
                     WHERE q.id = ANY(p_id) AND q.id = c.id AND q.org_id = c.org AND q.status = 'claimed'
                       AND q.attempts = c.attempt
                     RETURNING c.n, c.change <> 'retry' AS leaves, q.org_id, q.business_number_id, q.contact_id)
            SELECT (SELECT array_agg(CASE WHEN x.outbox = %3$L THEN d.n IS NOT NULL END ORDER BY x.n)
                    FROM unnest(p_outbox) WITH ORDINALITY AS x (outbox, n) LEFT JOIN changed d ON d.n = x.n),
                   ARRAY(SELECT d.org_id FROM changed d WHERE d.leaves ORDER BY d.n),
                   ARRAY(SELECT d.business_number_id FROM changed d WHERE d.leaves ORDER BY d.n),
                   ARRAY(SELECT d.contact_id FROM changed d WHERE d.leaves ORDER BY d.n)
            INTO held, leaving_orgs, leaving_numbers, leaving_contacts;
            IF cardinality(leaving_orgs) > 0 THEN
                -- A new statement: it sees the rows changed above.
                UPDATE %1$I SET head = true
                WHERE %1$I.id = ANY(ARRAY(
                    SELECT (SELECT n.id FROM %1$I n
                            WHERE n.contact_id = k.ct AND n.business_number_id = k.bn AND n.org_id = k.org
                              AND n.status IN ('pending', 'claimed')
                            ORDER BY n.due_at, n.id LIMIT 1)
                    FROM (SELECT DISTINCT * FROM unnest(leaving_orgs, leaving_numbers, leaving_contacts)) AS k (org, bn, ct)))
                  AND NOT %1$I.head;
            END IF;
            RETURN held;
        END
        $fn$;
        $sql$, queue, sent_columns, queue = 'outbox');
    END LOOP;
END
$do$;

-- The batch call of migration 4, with its rows written as above.
CREATE OR REPLACE FUNCTION flowcore_write_rows(
    p_lock_space int4, p_lock_inbox int8[], p_lock_outbox int8[], p_lock_orgs text[], p_lock_numbers text[],
    p_lock_contacts text[],
    p_in_org text[], p_in_number text[], p_in_contact text[], p_in_message text[], p_in_kind text[],
    p_in_payload text[], p_in_received int8[], p_in_due int8[],
    p_fin_outbox boolean[], p_fin_change text[], p_fin_org text[], p_fin_id int8[], p_fin_attempt int8[],
    p_fin_time int8[], p_fin_text text[],
    OUT inserted_ids int8[], OUT inserted_new boolean[], OUT finished boolean[])
LANGUAGE plpgsql AS $fn$
DECLARE
    inbox_held boolean[];
    outbox_held boolean[];
BEGIN
    IF cardinality(p_lock_inbox) + cardinality(p_lock_outbox) + cardinality(p_lock_orgs) > 0 THEN
        PERFORM flowcore_lock_conversations(p_lock_space, p_lock_inbox, p_lock_outbox, p_lock_orgs, p_lock_numbers,
                                            p_lock_contacts);
    END IF;
    inserted_ids := '{}';
    inserted_new := '{}';
    finished := '{}';
    IF cardinality(p_in_org) > 0 THEN
        SELECT r.ids, r.is_new INTO inserted_ids, inserted_new
        FROM flowcore_insert_inbox_rows(p_in_org, p_in_number, p_in_contact, p_in_message, p_in_kind, p_in_payload,
                                        p_in_received, p_in_due) AS r;
    END IF;
    IF cardinality(p_fin_id) > 0 THEN
        IF true = ANY(p_fin_outbox) THEN
            outbox_held := flowcore_finish_outbox_rows(p_fin_outbox, p_fin_change, p_fin_org, p_fin_id,
                                                       p_fin_attempt, p_fin_time, p_fin_text);
        END IF;
        IF false = ANY(p_fin_outbox) THEN
            inbox_held := flowcore_finish_inbox_rows(p_fin_outbox, p_fin_change, p_fin_org, p_fin_id,
                                                     p_fin_attempt, p_fin_time, p_fin_text);
        END IF;
        finished := ARRAY(SELECT COALESCE(o.held, i.held)
                          FROM generate_subscripts(p_fin_id, 1) AS k
                          LEFT JOIN unnest(outbox_held) WITH ORDINALITY AS o (held, n) ON o.n = k
                          LEFT JOIN unnest(inbox_held) WITH ORDINALITY AS i (held, n) ON i.n = k
                          ORDER BY k);
    END IF;
END
$fn$;

DROP FUNCTION IF EXISTS flowcore_finish_inbox_row(text, text, int8, int8, int8, text);
DROP FUNCTION IF EXISTS flowcore_finish_outbox_row(text, text, int8, int8, int8, text);
