-- flowcore-store schema (PostgreSQL). Times are unix milliseconds (BIGINT).
--
-- The inbox and the outbox are queues handed out one conversation at a time, in (due_at, id)
-- order. `head` marks the first unfinished row of its conversation: claims walk only the
-- heads (a partial index as small as the number of busy conversations), so their cost does
-- not grow with the rows waiting behind them. The store keeps `head` true on every
-- conversation's first unfinished row (finishes under a per-conversation advisory lock,
-- inbox inserts leaning on a row lock; see postgres.rs). A row that stopped being first
-- (an earlier one was inserted) keeps its mark, and claims check the order again anyway.
--
-- Only `flows` has a foreign key to `organizations`. The store checks every organization id
-- before it writes (and organizations are never removed); as foreign keys, those checks would
-- make every insert into the busy tables share-lock its organization's row: one hot row,
-- locked by every concurrent transaction at once (a MultiXact written to its page each time).

CREATE TABLE organizations (
    id         TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

-- A turn rewrites its session's row (state, version, node, wake-up, updated_at). No index
-- holds a column a turn changes, so the update stays in place (a heap-only tuple: no new
-- index entries, old versions pruned as the page is read), and half of each page is left
-- free for those versions. `cohort` is the cohort the session was created in (such as the
-- A/B test variant its contact was assigned), which metrics count sessions by: written once,
-- with the session.
CREATE TABLE sessions (
    id                 BIGSERIAL PRIMARY KEY,
    org_id             TEXT    NOT NULL,
    business_number_id TEXT    NOT NULL,
    contact_id         TEXT    NOT NULL,
    flow_id            TEXT    NOT NULL,
    flow_version       BIGINT NOT NULL,
    version            BIGINT NOT NULL,
    status             TEXT    NOT NULL,
    state_schema       BIGINT NOT NULL,
    state              TEXT    NOT NULL,
    current_node       TEXT,
    wake_at            BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    closed_at          BIGINT,
    cohort             TEXT
) WITH (fillfactor = 50);

CREATE TABLE message_log (
    id                 BIGSERIAL PRIMARY KEY,
    org_id             TEXT    NOT NULL,
    business_number_id TEXT    NOT NULL,
    contact_id         TEXT    NOT NULL,
    flow_id            TEXT,
    direction          TEXT    NOT NULL,
    content_text       TEXT,
    content_json       TEXT,
    node_id            TEXT,
    wamid              TEXT,
    at                 BIGINT NOT NULL,
    metadata           TEXT    NOT NULL
);

CREATE TABLE inbox (
    id                 BIGSERIAL PRIMARY KEY,
    org_id             TEXT    NOT NULL,
    business_number_id TEXT    NOT NULL,
    contact_id         TEXT    NOT NULL,
    message_id         TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    received_at        BIGINT NOT NULL,
    due_at             BIGINT NOT NULL,
    status             TEXT    NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    lease_until        BIGINT,
    retry_at           BIGINT,
    last_error         TEXT,
    finished_at        BIGINT,
    head               BOOLEAN NOT NULL DEFAULT false,
    -- Led by the message id, the key serves only lookups by message id: the conversation
    -- index (contact first) stays the one way in by conversation. Led by the organization,
    -- a plan made on a nearly empty table could reach a conversation's next row through
    -- every row its organization ever received.
    CONSTRAINT inbox_message_org_key UNIQUE (message_id, org_id)
);

CREATE TABLE outbox (
    id                 BIGSERIAL PRIMARY KEY,
    org_id             TEXT    NOT NULL,
    business_number_id TEXT    NOT NULL,
    contact_id         TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    inbox_id           BIGINT,
    due_at             BIGINT NOT NULL,
    status             TEXT    NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    lease_until        BIGINT,
    retry_at           BIGINT,
    last_error         TEXT,
    wamid              TEXT,
    sent_at            BIGINT,
    delivery           TEXT,
    delivery_rank      BIGINT NOT NULL DEFAULT 0,
    delivery_at        BIGINT,
    finished_at        BIGINT,
    head               BOOLEAN NOT NULL DEFAULT false
);

CREATE TABLE flows (
    org_id       TEXT    NOT NULL REFERENCES organizations(id),
    flow_id      TEXT    NOT NULL,
    version      BIGINT NOT NULL,
    definition   TEXT    NOT NULL,
    published_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, flow_id, version)
);

-- At most one active session per key; closed ones are history. It also finds an
-- organization's active sessions (it leads with the organization), sorted or filtered on
-- `updated_at` afterwards: by last activity, and the expired ones for the purge.
CREATE UNIQUE INDEX sessions_active_key
    ON sessions (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active';
CREATE INDEX sessions_org_created ON sessions (org_id, created_at);
-- Closed sessions past retention, for the purge (closing changes the status: never in place).
CREATE INDEX sessions_org_closed ON sessions (org_id, closed_at) WHERE status = 'closed';

CREATE INDEX message_log_conversation ON message_log (org_id, business_number_id, contact_id, id);
CREATE INDEX message_log_org_at ON message_log (org_id, at);
-- A contact's latest inbound entries, for the per-contact rate limit (counted from the shared
-- log, so it holds across server instances and restarts): a short range read, not a walk
-- through the conversation's history. Partial: only inbound entries pay for it.
CREATE INDEX message_log_inbound
    ON message_log (org_id, business_number_id, contact_id, at) WHERE direction = 'in';

-- What claims walk: the conversations' first unfinished rows, in order.
CREATE INDEX inbox_heads ON inbox (due_at, id) WHERE head AND status IN ('pending', 'claimed');
-- A conversation's unfinished rows in order: finding its first one, checking a claim's turn.
-- The contact leads (the three are always given together): a lookup of one row by id and
-- organization must not mistake these for a way in by organization.
CREATE INDEX inbox_open_conversation
    ON inbox (contact_id, business_number_id, org_id, due_at, id) WHERE status IN ('pending', 'claimed');
-- Rows out with a worker: one live lease per conversation.
CREATE INDEX inbox_claimed
    ON inbox (contact_id, business_number_id, org_id) WHERE status = 'claimed';
CREATE INDEX inbox_finished ON inbox (org_id, finished_at) WHERE status IN ('done', 'failed');

-- The outbox's, for the same reasons as the inbox's.
CREATE INDEX outbox_heads ON outbox (due_at, id) WHERE head AND status IN ('pending', 'claimed');
CREATE INDEX outbox_open_conversation
    ON outbox (contact_id, business_number_id, org_id, due_at, id) WHERE status IN ('pending', 'claimed');
CREATE INDEX outbox_claimed
    ON outbox (contact_id, business_number_id, org_id) WHERE status = 'claimed';
CREATE INDEX outbox_wamid ON outbox (org_id, wamid) WHERE wamid IS NOT NULL;
CREATE INDEX outbox_finished ON outbox (org_id, finished_at) WHERE status IN ('done', 'failed');

-- The store's hot statements are functions: their plans are cached per connection, and a
-- batch (webhooks' inserts, senders' claim changes, units of work) is one call, one round
-- trip, in its own transaction. Parameters are column arrays, one element per row.
--
-- A function's plan is made once per connection, generic, often on nearly empty tables and
-- without statistics (or with autovacuum off). So every lookup is written as a probe of an
-- index per row (`id = ANY(...)` on a primary key, a LATERAL or scalar subquery), never a
-- join or a `NOT EXISTS` the planner could turn into a scan of a whole queue; and where the
-- primary key must be the way in, a status test is written as a `CASE`, which no partial
-- index's predicate matches (read off the index of claimed rows, a lookup would visit every
-- claimed row, and every dead entry not yet cleaned up, on each call).

-- Takes the advisory locks of the conversations a transaction adds unfinished rows to or
-- removes them from, in key order (two transactions taking several never wait on each other
-- in a cycle): the conversations of the given inbox and outbox rows and the given
-- (organization, number, contact) triples. The inbox rows are row-locked first: an inbox
-- insert, which takes no conversation lock, skips locked rows when it looks for an earlier
-- row to lean on. Nothing looks at the outbox rows' locks, and a row's conversation never
-- changes, so those are only read. A hash collision only makes two conversations wait for
-- each other.
CREATE FUNCTION flowcore_lock_conversations(
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

-- Inserts one inbox row unless its message id is there already, and tells its id and
-- whether it is new.
--
-- Takes no conversation lock (a webhook's `200` waits for this): it share-locks one earlier
-- unfinished row instead, which cannot then be finished before this insert is committed, so
-- whoever finishes it later sees this row. Rows locked by a finisher (or a claim) are
-- skipped; if every earlier row is, this row is marked a head too: a stale mark at worst,
-- which claims check.
CREATE FUNCTION flowcore_insert_inbox_row(
    p_org text, p_number text, p_contact text, p_message text, p_kind text, p_payload text, p_received int8,
    p_due int8, OUT id int8, OUT inserted boolean)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $fn$
BEGIN
    WITH earlier AS (
        SELECT e.id FROM inbox e
        WHERE e.org_id = p_org AND e.business_number_id = p_number AND e.contact_id = p_contact
          AND e.status IN ('pending', 'claimed') AND e.due_at <= p_due
        LIMIT 1 FOR SHARE SKIP LOCKED)
    INSERT INTO inbox (org_id, business_number_id, contact_id, message_id, kind, payload, received_at, due_at, status,
                       head)
    SELECT p_org, p_number, p_contact, p_message, p_kind, p_payload, p_received, p_due, 'pending',
           NOT EXISTS (SELECT 1 FROM earlier)
    ON CONFLICT (org_id, message_id) DO NOTHING
    RETURNING inbox.id INTO id;
    inserted := id IS NOT NULL;
    IF NOT inserted THEN
        SELECT i.id INTO id FROM inbox i WHERE i.org_id = p_org AND i.message_id = p_message;
    END IF;
END
$fn$;

-- The same for a batch, as one statement: inserts the rows whose message ids are not in the
-- inbox yet and tells, in the given order, each row's id and whether it is new. The rows of
-- a batch see each other as if each were its own statement, in the given order: an insert
-- after another new row of its conversation (due no later) is not its head, and a message
-- given twice is inserted once, the second answered as a duplicate.
CREATE FUNCTION flowcore_insert_inbox_rows(
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

-- Applies the claim changes of one queue (the rows whose `p_outbox` is the queue's) whose
-- claims still hold, and hands each conversation whose rows leave the queue its head: to its
-- first unfinished row after all of them. Answers, for every given row, whether its claim
-- held: NULL for the other queue's rows. A change given twice for one row applies once; the
-- second is refused, as the first took the row out of `claimed`.
--
-- p_change: 'done' (inbox), 'sent' (outbox: p_text the wamid), 'retry' (p_time the retry
-- time, p_text the error) or 'failed' (p_text the error). p_time is the time of the change.
CREATE FUNCTION flowcore_finish_inbox_rows(
    p_outbox boolean[], p_change text[], p_org text[], p_id int8[], p_attempt int8[], p_time int8[], p_text text[])
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
             WHERE x.outbox = false
             ORDER BY x.id, x.n),
         changed AS (
             UPDATE inbox q SET
                 status = CASE c.change WHEN 'retry' THEN 'pending' WHEN 'failed' THEN 'failed' ELSE 'done' END,
                 lease_until = NULL,
                 finished_at = CASE WHEN c.change <> 'retry' THEN c.at ELSE q.finished_at END,
                 retry_at = CASE WHEN c.change = 'retry' THEN c.at ELSE q.retry_at END,
                 last_error = CASE WHEN c.change IN ('retry', 'failed') THEN c.txt ELSE q.last_error END
             FROM changes c
             WHERE q.id = ANY(p_id) AND q.id = c.id AND q.org_id = c.org
               AND CASE WHEN q.status = 'claimed' THEN true END AND q.attempts = c.attempt
             RETURNING c.n, c.change <> 'retry' AS leaves, q.org_id, q.business_number_id, q.contact_id)
    SELECT (SELECT array_agg(CASE WHEN x.outbox = false THEN d.n IS NOT NULL END ORDER BY x.n)
            FROM unnest(p_outbox) WITH ORDINALITY AS x (outbox, n) LEFT JOIN changed d ON d.n = x.n),
           ARRAY(SELECT d.org_id FROM changed d WHERE d.leaves ORDER BY d.n),
           ARRAY(SELECT d.business_number_id FROM changed d WHERE d.leaves ORDER BY d.n),
           ARRAY(SELECT d.contact_id FROM changed d WHERE d.leaves ORDER BY d.n)
    INTO held, leaving_orgs, leaving_numbers, leaving_contacts;
    IF cardinality(leaving_orgs) > 0 THEN
        -- A new statement: it sees the rows changed above.
        UPDATE inbox SET head = true
        WHERE inbox.id = ANY(ARRAY(
            SELECT (SELECT n.id FROM inbox n
                    WHERE n.contact_id = k.ct AND n.business_number_id = k.bn AND n.org_id = k.org
                      AND n.status IN ('pending', 'claimed')
                    ORDER BY n.due_at, n.id LIMIT 1)
            FROM (SELECT DISTINCT * FROM unnest(leaving_orgs, leaving_numbers, leaving_contacts)) AS k (org, bn, ct)))
          AND NOT inbox.head;
    END IF;
    RETURN held;
END
$fn$;

-- The same for the outbox; a sent reply also records its wamid and its first delivery
-- status ('sent', unless a later status arrived first).
CREATE FUNCTION flowcore_finish_outbox_rows(
    p_outbox boolean[], p_change text[], p_org text[], p_id int8[], p_attempt int8[], p_time int8[], p_text text[])
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
             WHERE x.outbox = true
             ORDER BY x.id, x.n),
         changed AS (
             UPDATE outbox q SET
                 status = CASE c.change WHEN 'retry' THEN 'pending' WHEN 'failed' THEN 'failed' ELSE 'done' END,
                 lease_until = NULL,
                 finished_at = CASE WHEN c.change <> 'retry' THEN c.at ELSE q.finished_at END,
                 retry_at = CASE WHEN c.change = 'retry' THEN c.at ELSE q.retry_at END,
                 last_error = CASE WHEN c.change IN ('retry', 'failed') THEN c.txt ELSE q.last_error END,
                 sent_at = CASE WHEN c.change = 'sent' THEN c.at ELSE q.sent_at END,
                 wamid = CASE WHEN c.change = 'sent' THEN c.txt ELSE q.wamid END,
                 delivery = CASE WHEN c.change = 'sent' AND q.delivery_rank < 1 THEN 'sent' ELSE q.delivery END,
                 delivery_at = CASE WHEN c.change = 'sent' AND q.delivery_rank < 1 THEN c.at ELSE q.delivery_at END,
                 delivery_rank = CASE WHEN c.change = 'sent' THEN GREATEST(q.delivery_rank, 1)
                                      ELSE q.delivery_rank END
             FROM changes c
             WHERE q.id = ANY(p_id) AND q.id = c.id AND q.org_id = c.org
               AND CASE WHEN q.status = 'claimed' THEN true END AND q.attempts = c.attempt
             RETURNING c.n, c.change <> 'retry' AS leaves, q.org_id, q.business_number_id, q.contact_id)
    SELECT (SELECT array_agg(CASE WHEN x.outbox = true THEN d.n IS NOT NULL END ORDER BY x.n)
            FROM unnest(p_outbox) WITH ORDINALITY AS x (outbox, n) LEFT JOIN changed d ON d.n = x.n),
           ARRAY(SELECT d.org_id FROM changed d WHERE d.leaves ORDER BY d.n),
           ARRAY(SELECT d.business_number_id FROM changed d WHERE d.leaves ORDER BY d.n),
           ARRAY(SELECT d.contact_id FROM changed d WHERE d.leaves ORDER BY d.n)
    INTO held, leaving_orgs, leaving_numbers, leaving_contacts;
    IF cardinality(leaving_orgs) > 0 THEN
        -- A new statement: it sees the rows changed above.
        UPDATE outbox SET head = true
        WHERE outbox.id = ANY(ARRAY(
            SELECT (SELECT n.id FROM outbox n
                    WHERE n.contact_id = k.ct AND n.business_number_id = k.bn AND n.org_id = k.org
                      AND n.status IN ('pending', 'claimed')
                    ORDER BY n.due_at, n.id LIMIT 1)
            FROM (SELECT DISTINCT * FROM unnest(leaving_orgs, leaving_numbers, leaving_contacts)) AS k (org, bn, ct)))
          AND NOT outbox.head;
    END IF;
    RETURN held;
END
$fn$;

-- A batch's rows: takes the conversations' locks (`flowcore_lock_conversations`, with
-- everything else the batch's transaction will write), then inserts the inbox rows and
-- applies the claim changes. Answers, in the given order, each insert's id and whether it is
-- new, and whether each change's claim held.
CREATE FUNCTION flowcore_write_rows(
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

-- Claims walk the heads (`inbox_heads`, `outbox_heads`) in `(due_at, id)` order and take
-- those whose turn it is: due, not waiting for a retry, not out under a live lease, nothing
-- of their conversation before them (a head can be stale) and no other row of their
-- conversation out under a live lease. Each check is one index probe, so a claim costs about
-- the number of heads it passes, not the backlog. The SET clauses rule out a bitmap scan and
-- a sort: those would read every head to keep the first few, and a bitmap scan never marks
-- the index entries of finished heads dead, so every claim would visit them again.
--
-- A claim need not wait for its WAL flush: lost in a crash, it only leaves the row as it was
-- (unclaimed, claimed again later). Whatever is done under it is committed later,
-- synchronously, and that flush takes this claim along.
--
-- Parameters: $1 now, $2 the organization (NULL: any), $3 the limit, $4 the lease's end.
--
-- An inbox head also waits while a reply of its conversation is claimed under a live lease:
-- the turn runs once that reply is sent (or its lease runs out), so its own replies can be
-- claimed as they are written (see `flowcore_commit_units`) instead of falling behind, turn
-- after turn. A reply waiting for a retry does not hold the conversation back.
CREATE FUNCTION flowcore_claim_inbox(int8, text, int8, int8)
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

-- The outbox's claim: the inbox's, without the wait for a conversation's replies.
CREATE FUNCTION flowcore_claim_outbox(int8, text, int8, int8)
RETURNS SETOF outbox LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off
AS $fn$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    UPDATE outbox SET status = 'claimed', attempts = attempts + 1, lease_until = $4
    WHERE id IN (
      SELECT i.id FROM outbox i
      WHERE i.head AND i.status IN ('pending', 'claimed') AND i.due_at <= $1 AND ($2::text IS NULL OR i.org_id = $2)
        AND ((i.status = 'pending' AND (i.retry_at IS NULL OR i.retry_at <= $1))
             OR (i.status = 'claimed' AND i.lease_until < $1))
        AND i.id = (
          SELECT j.id FROM outbox j
          WHERE j.contact_id = i.contact_id AND j.business_number_id = i.business_number_id AND j.org_id = i.org_id
            AND j.status IN ('pending', 'claimed')
          ORDER BY j.due_at, j.id LIMIT 1)
        AND (
          SELECT 1 FROM outbox j
          WHERE j.contact_id = i.contact_id AND j.business_number_id = i.business_number_id AND j.org_id = i.org_id
            AND j.status = 'claimed' AND j.lease_until >= $1 AND j.id <> i.id
          LIMIT 1) IS NULL
      ORDER BY i.due_at, i.id
      LIMIT $3
      FOR UPDATE OF i SKIP LOCKED)
    RETURNING outbox.*;
END
$fn$;

-- Units of work: handled inbox rows marked done (their conversations' heads handed on),
-- session saves (compare-and-set updates and new sessions), log rows and replies.
--
-- Takes the conversations' locks (`p_lock_*`: the triples besides the handled rows'), then
-- checks before it writes: every claim must hold, every update must find its version, every
-- new session must find no active one. If any check fails it writes nothing and
-- `units_ok` is false; the caller runs the units one by one to tell which. The checks read
-- under the locks, so they stay true until the writes; a write that still falls short (a
-- session written outside the store) raises an error, which rolls the call back.
--
-- New rows' ids come back sorted; each kind is inserted in unit order, so they map back to
-- the units in order.
--
-- Replies are written claimed for the caller when it asks (`p_out_claim_until`, the lease's
-- end, per reply: NULL leaves it pending) and their conversation has no unfinished reply:
-- no claim of their own before they go out. The caller must ask for every reply of a
-- conversation in the call or for none, and send them in order: one claim then covers them
-- all, as claims see only a conversation's first row, and a claimed first row holds back the
-- rest.
--
-- A handled row's conversation's next row can be claimed for the caller too, as the head is
-- handed on (`p_claim_next_until`, per handled row: the lease's end, NULL for no): one new
-- version of the row, no claim. It is claimed only as a claim would claim it: due by the
-- unit's time, not waiting for a retry, and pending, its conversation's first unfinished row
-- under the conversation's lock. Unlike a claim, it does not wait for the unit's replies to
-- be sent: the caller sends them before it runs the claimed event's turn. The claimed rows
-- come back as column arrays, `next_after` naming the handled row each follows; their update
-- does not name the status it expects, which a plan could serve from a scan of every pending
-- row's entry in `inbox_open_conversation`.
CREATE FUNCTION flowcore_commit_units(
    p_lock_space int4, p_lock_orgs text[], p_lock_numbers text[], p_lock_contacts text[],
    p_claim_org text[], p_claim_id int8[], p_claim_attempt int8[], p_claim_now int8[],
    p_upd_org text[], p_upd_number text[], p_upd_contact text[], p_upd_flow text[], p_upd_expected int8[],
    p_upd_status text[], p_upd_state text[], p_upd_node text[], p_upd_wake int8[], p_upd_now int8[],
    p_upd_closed int8[], p_upd_flow_version int8[],
    p_new_org text[], p_new_number text[], p_new_contact text[], p_new_flow text[], p_new_flow_version int8[],
    p_new_status text[], p_new_state text[], p_new_node text[], p_new_wake int8[], p_new_now int8[],
    p_new_closed int8[], p_new_cohort text[],
    p_state_schema int8,
    p_log_org text[], p_log_number text[], p_log_contact text[], p_log_flow text[], p_log_direction text[],
    p_log_text text[], p_log_json text[], p_log_node text[], p_log_wamid text[], p_log_at int8[],
    p_log_metadata text[],
    p_out_org text[], p_out_number text[], p_out_contact text[], p_out_payload text[], p_out_inbox_id int8[],
    p_out_due_at int8[], p_out_claim_until int8[], p_claim_next_until int8[])
RETURNS TABLE (units_ok boolean, claims_held int8, updated_ids int8[], updated_versions int8[], created_ids int8[],
               done_count int8, log_ids int8[], outbox_ids int8[], outbox_claimed boolean[],
               next_after int8[], next_ids int8[], next_numbers text[], next_contacts text[], next_messages text[],
               next_kinds text[], next_payloads text[], next_received int8[], next_due int8[], next_attempts int8[],
               next_leases int8[], next_retry int8[], next_errors text[])
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $fn$
BEGIN
    PERFORM flowcore_lock_conversations(p_lock_space, p_claim_id, '{}', p_lock_orgs, p_lock_numbers, p_lock_contacts);
    -- A volatile function's next statement takes a new snapshot: it sees what every earlier
    -- holder of these locks committed.
    WITH claims AS (
             SELECT * FROM unnest(p_claim_org, p_claim_id, p_claim_attempt, p_claim_now, p_claim_next_until)
                      AS x (org, id, attempt, at, next_until)),
         held AS (
             SELECT i.id, i.org_id, i.business_number_id, i.contact_id,
                    (SELECT k.at FROM claims k WHERE k.id = i.id) AS at
             FROM inbox i
             WHERE i.id = ANY(p_claim_id) AND CASE WHEN i.status = 'claimed' THEN true END
               AND (i.org_id, i.attempts) = (SELECT k.org, k.attempt FROM claims k WHERE k.id = i.id)
             FOR NO KEY UPDATE OF i),
         updates AS (
             SELECT * FROM unnest(p_upd_org, p_upd_number, p_upd_contact, p_upd_flow, p_upd_expected, p_upd_status,
                                  p_upd_state, p_upd_node, p_upd_wake, p_upd_now, p_upd_closed, p_upd_flow_version)
                      WITH ORDINALITY AS x (org, bn, ct, fl, expected, st, state, node, wake, at, closed, flow_version, n)),
         current_rows AS (
             SELECT x.n, s.id FROM updates x,
                    LATERAL (SELECT s.id FROM sessions s
                             WHERE s.org_id = x.org AND s.business_number_id = x.bn AND s.contact_id = x.ct
                               AND s.flow_id = x.fl AND s.status = 'active' AND s.version = x.expected
                             FOR UPDATE) AS s),
         creates AS (
             SELECT * FROM unnest(p_new_org, p_new_number, p_new_contact, p_new_flow, p_new_flow_version, p_new_status,
                                  p_new_state, p_new_node, p_new_wake, p_new_now, p_new_closed, p_new_cohort)
                      WITH ORDINALITY AS x (org, bn, ct, fl, flow_version, st, state, node, wake, at, closed, cohort, n)),
         checks AS (
             SELECT (SELECT count(*) FROM held) = cardinality(p_claim_id)
                AND (SELECT count(*) FROM current_rows) = cardinality(p_upd_expected)
                AND NOT EXISTS (
                    SELECT 1 FROM creates x
                    WHERE (SELECT s.id FROM sessions s
                           WHERE s.org_id = x.org AND s.business_number_id = x.bn AND s.contact_id = x.ct
                             AND s.flow_id = x.fl AND s.status = 'active' LIMIT 1) IS NOT NULL) AS passed),
         updated AS (
             UPDATE sessions s SET version = s.version + 1, status = x.st, state_schema = p_state_schema,
                    state = x.state, current_node = x.node, wake_at = x.wake, updated_at = x.at, closed_at = x.closed,
                    flow_version = x.flow_version
             FROM current_rows c JOIN updates x ON x.n = c.n
             WHERE s.id = c.id AND (SELECT passed FROM checks)
             RETURNING x.n, s.id, s.version),
         created AS (
             INSERT INTO sessions (org_id, business_number_id, contact_id, flow_id, flow_version, version, status,
                                   state_schema, state, current_node, wake_at, created_at, updated_at, closed_at, cohort)
             SELECT x.org, x.bn, x.ct, x.fl, x.flow_version, 1, x.st, p_state_schema, x.state, x.node, x.wake, x.at,
                    x.at, x.closed, x.cohort
             FROM creates x WHERE (SELECT passed FROM checks) ORDER BY x.n
             ON CONFLICT (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active' DO NOTHING
             RETURNING sessions.id),
         done AS (
             UPDATE inbox SET status = 'done', lease_until = NULL, finished_at = h.at
             FROM held h WHERE inbox.id = h.id AND (SELECT passed FROM checks)
             RETURNING inbox.id),
         -- Each handled row's conversation hands its head to its next unfinished row, which
         -- is claimed for the caller when the unit asked and it is claimable now.
         next_rows AS MATERIALIZED (
             SELECT DISTINCT ON (j.id) j.id, h.id AS after, k.next_until AS until,
                    k.next_until IS NOT NULL AND j.status = 'pending' AND j.due_at <= k.at
                    AND (j.retry_at IS NULL OR j.retry_at <= k.at) AS take
             FROM held h
             JOIN claims k ON k.id = h.id
             CROSS JOIN LATERAL (
                 SELECT n.id, n.status, n.due_at, n.retry_at FROM inbox n
                 WHERE n.contact_id = h.contact_id AND n.business_number_id = h.business_number_id
                   AND n.org_id = h.org_id AND n.status IN ('pending', 'claimed') AND n.id <> ALL(p_claim_id)
                 ORDER BY n.due_at, n.id LIMIT 1) AS j
             WHERE (SELECT passed FROM checks)
             ORDER BY j.id, h.id),
         -- Joined with `next_rows` (a nested loop of primary key probes, as `done` is), with
         -- no condition on the status: the planner would read one off a partial index of
         -- the whole queue. The rows were read in this statement, under the conversations'
         -- locks; nothing else changes a conversation's row that is not its first.
         next_heads AS (
             UPDATE inbox SET head = true
             FROM next_rows r WHERE inbox.id = r.id AND NOT r.take AND NOT inbox.head),
         next_claimed AS (
             UPDATE inbox SET head = true, status = 'claimed', attempts = inbox.attempts + 1, lease_until = r.until
             FROM next_rows r WHERE inbox.id = r.id AND r.take
             RETURNING r.after, inbox.*),
         logged AS (
             INSERT INTO message_log (org_id, business_number_id, contact_id, flow_id, direction, content_text,
                                      content_json, node_id, wamid, at, metadata)
             SELECT x.org, x.bn, x.ct, x.fl, x.dir, x.tx, x.js, x.nd, x.wm, x.at, x.md
             FROM unnest(p_log_org, p_log_number, p_log_contact, p_log_flow, p_log_direction, p_log_text, p_log_json,
                         p_log_node, p_log_wamid, p_log_at, p_log_metadata)
                  WITH ORDINALITY AS x (org, bn, ct, fl, dir, tx, js, nd, wm, at, md, n)
             WHERE (SELECT passed FROM checks) ORDER BY x.n
             RETURNING message_log.id),
         replies AS (
             SELECT x.*,
                    -- Its conversation's first: the first of its conversation among these (ids
                    -- follow x.n) and after no stored unfinished row.
                    row_number() OVER (PARTITION BY x.org, x.bn, x.ct ORDER BY x.du, x.n) = 1
                    AND NOT EXISTS (SELECT 1 FROM outbox e
                                    WHERE e.contact_id = x.ct AND e.business_number_id = x.bn AND e.org_id = x.org
                                      AND e.status IN ('pending', 'claimed') AND e.due_at <= x.du) AS first,
                    -- Claimed for the caller as they are written: the caller asked (for every
                    -- reply of the conversation here, see `p_out_claim_until`) and its
                    -- conversation has no stored unfinished reply, so these go first, in order.
                    x.cl IS NOT NULL
                    AND (SELECT 1 FROM outbox e
                         WHERE e.contact_id = x.ct AND e.business_number_id = x.bn AND e.org_id = x.org
                           AND e.status IN ('pending', 'claimed') LIMIT 1) IS NULL AS claimed
             FROM unnest(p_out_org, p_out_number, p_out_contact, p_out_payload, p_out_inbox_id, p_out_due_at,
                         p_out_claim_until)
                  WITH ORDINALITY AS x (org, bn, ct, pl, ib, du, cl, n)),
         queued AS (
             INSERT INTO outbox (org_id, business_number_id, contact_id, payload, inbox_id, due_at, status, head,
                                 attempts, lease_until)
             -- Claimed ones are all heads: when the one before finishes, none needs the mark
             -- handed on (a head that is not its conversation's first is never claimed).
             SELECT r.org, r.bn, r.ct, r.pl, r.ib, r.du, CASE WHEN r.claimed THEN 'claimed' ELSE 'pending' END,
                    r.first OR r.claimed, CASE WHEN r.claimed THEN 1 ELSE 0 END, CASE WHEN r.claimed THEN r.cl END
             FROM replies r
             WHERE (SELECT passed FROM checks) ORDER BY r.n
             RETURNING outbox.id, outbox.status = 'claimed' AS claimed)
    SELECT (SELECT passed FROM checks),
           (SELECT count(*) FROM held),
           COALESCE((SELECT array_agg(u.id ORDER BY u.n) FROM updated u), '{}'),
           COALESCE((SELECT array_agg(u.version ORDER BY u.n) FROM updated u), '{}'),
           COALESCE((SELECT array_agg(c.id ORDER BY c.id) FROM created c), '{}'),
           (SELECT count(*) FROM done),
           COALESCE((SELECT array_agg(l.id ORDER BY l.id) FROM logged l), '{}'),
           COALESCE((SELECT array_agg(q.id ORDER BY q.id) FROM queued q), '{}'),
           COALESCE((SELECT array_agg(q.claimed ORDER BY q.id) FROM queued q), '{}'),
           n.after, n.ids, n.numbers, n.contacts, n.messages, n.kinds, n.payloads, n.received, n.due, n.attempts,
           n.leases, n.retry, n.errors
    FROM (SELECT COALESCE(array_agg(c.after ORDER BY c.id), '{}') AS after,
                 COALESCE(array_agg(c.id ORDER BY c.id), '{}') AS ids,
                 COALESCE(array_agg(c.business_number_id ORDER BY c.id), '{}') AS numbers,
                 COALESCE(array_agg(c.contact_id ORDER BY c.id), '{}') AS contacts,
                 COALESCE(array_agg(c.message_id ORDER BY c.id), '{}') AS messages,
                 COALESCE(array_agg(c.kind ORDER BY c.id), '{}') AS kinds,
                 COALESCE(array_agg(c.payload ORDER BY c.id), '{}') AS payloads,
                 COALESCE(array_agg(c.received_at ORDER BY c.id), '{}') AS received,
                 COALESCE(array_agg(c.due_at ORDER BY c.id), '{}') AS due,
                 COALESCE(array_agg(c.attempts ORDER BY c.id), '{}') AS attempts,
                 COALESCE(array_agg(c.lease_until ORDER BY c.id), '{}') AS leases,
                 COALESCE(array_agg(c.retry_at ORDER BY c.id), '{}') AS retry,
                 COALESCE(array_agg(c.last_error ORDER BY c.id), '{}') AS errors
          FROM next_claimed c) AS n
    INTO units_ok, claims_held, updated_ids, updated_versions, created_ids, done_count, log_ids, outbox_ids,
         outbox_claimed, next_after, next_ids, next_numbers, next_contacts, next_messages, next_kinds, next_payloads,
         next_received, next_due, next_attempts, next_leases, next_retry, next_errors;
    IF units_ok AND NOT (cardinality(updated_ids) = cardinality(p_upd_expected)
                         AND cardinality(created_ids) = cardinality(p_new_org)
                         AND done_count = cardinality(p_claim_id)
                         AND cardinality(log_ids) = cardinality(p_log_org)
                         AND cardinality(outbox_ids) = cardinality(p_out_org)) THEN
        RAISE EXCEPTION 'flowcore_commit_units: a row the checks promised was not written (a session written outside the store?)';
    END IF;
    RETURN NEXT;
END
$fn$;
