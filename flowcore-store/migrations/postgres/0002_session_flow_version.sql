-- A session's update writes the flow version it names (`p_upd_flow_version`): a runtime
-- may move a running session to a newer version of its flow when its state fits there.
-- `flowcore_commit_units` is otherwise unchanged; it gains that one parameter, after
-- `p_upd_closed`. `flow_version` is in no index, so the update stays a heap-only one.

DROP FUNCTION flowcore_commit_units(int4, text[], text[], text[], text[], int8[], int8[], int8[], text[], text[], text[], text[], int8[], text[], text[], text[], int8[], int8[], int8[], text[], text[], text[], text[], int8[], text[], text[], text[], int8[], int8[], int8[], text[], int8, text[], text[], text[], text[], text[], text[], text[], text[], text[], int8[], text[], text[], text[], text[], text[], int8[], int8[], int8[], int8[]);

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
