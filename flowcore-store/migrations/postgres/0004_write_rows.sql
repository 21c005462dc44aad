-- flowcore-store schema v4 (PostgreSQL): a batch's inbox inserts and claim changes in one call.
--
-- A batch of webhooks' inserts and senders' "sent" marks used to cost BEGIN, a lock
-- statement, one statement per row and COMMIT: each a round trip, with the server's and the
-- client's system calls, for a few microseconds of work each. Under the load bench these were
-- five in six of all statements. Here they are one call; without units of work in the batch
-- it is its own transaction.
--
-- Each row is still its own statement, in the given order, so each sees the ones before it
-- (a conversation's second new row is not its head; a second finished row of a conversation
-- hands the head on past the first).

-- Inserts one inbox row unless its message id is there already, and tells its id and
-- whether it is new.
--
-- Takes no conversation lock (a webhook's `200` waits for this): it share-locks one earlier
-- unfinished row instead, which cannot then be finished before this insert is committed, so
-- whoever finishes it later sees this row. Rows locked by a finisher (or a claim) are
-- skipped; if every earlier row is, this row is marked a head too: a stale mark at worst,
-- which claims check.
CREATE OR REPLACE FUNCTION flowcore_insert_inbox_row(
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

-- Applies a change to a claimed row if the claim still holds, and hands its conversation's
-- head on to the next unfinished row when the row leaves the queue. False: the claim did not
-- hold (the row is gone, claimed again or finished), and nothing was written.
--
-- p_change: 'done' (inbox), 'sent' (outbox: p_text the wamid), 'retry' (p_time the retry
-- time, p_text the error) or 'failed' (p_text the error). p_time is the time of the change.
-- One text for both queues: `flowcore_finish_inbox_row` and `flowcore_finish_outbox_row`;
-- a sent reply also records its wamid and its first delivery status.
DO $do$
DECLARE
    queue text;
    sent_columns text;
BEGIN
    FOREACH queue IN ARRAY ARRAY['inbox', 'outbox'] LOOP
        sent_columns := CASE queue WHEN 'outbox' THEN $cols$,
                    sent_at = CASE WHEN p_change = 'sent' THEN p_time ELSE sent_at END,
                    wamid = CASE WHEN p_change = 'sent' THEN p_text ELSE wamid END,
                    delivery = CASE WHEN p_change = 'sent' AND delivery_rank < 1 THEN 'sent' ELSE delivery END,
                    delivery_at = CASE WHEN p_change = 'sent' AND delivery_rank < 1 THEN p_time ELSE delivery_at END,
                    delivery_rank = CASE WHEN p_change = 'sent' THEN GREATEST(delivery_rank, 1) ELSE delivery_rank END$cols$
            ELSE '' END;
        EXECUTE format($sql$
        CREATE OR REPLACE FUNCTION flowcore_finish_%1$s_row(
            p_change text, p_org text, p_id int8, p_attempt int8, p_time int8, p_text text)
        RETURNS boolean
        LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $fn$
        DECLARE
            leaves boolean := p_change <> 'retry';
            v_number text;
            v_contact text;
        BEGIN
            UPDATE %1$I SET
                    status = CASE p_change WHEN 'retry' THEN 'pending' WHEN 'failed' THEN 'failed' ELSE 'done' END,
                    lease_until = NULL,
                    finished_at = CASE WHEN leaves THEN p_time ELSE finished_at END,
                    retry_at = CASE WHEN p_change = 'retry' THEN p_time ELSE retry_at END,
                    last_error = CASE WHEN p_change IN ('retry', 'failed') THEN p_text ELSE last_error END%2$s
            WHERE %1$I.org_id = p_org AND %1$I.id = p_id AND %1$I.status = 'claimed' AND %1$I.attempts = p_attempt
            RETURNING %1$I.business_number_id, %1$I.contact_id INTO v_number, v_contact;
            IF NOT FOUND THEN
                RETURN false;
            END IF;
            IF leaves THEN
                UPDATE %1$I SET head = true
                WHERE %1$I.id = (SELECT n.id FROM %1$I n
                                 WHERE n.contact_id = v_contact AND n.business_number_id = v_number
                                   AND n.org_id = p_org AND n.status IN ('pending', 'claimed')
                                 ORDER BY n.due_at, n.id LIMIT 1)
                  AND NOT %1$I.head;
            END IF;
            RETURN true;
        END
        $fn$;
        $sql$, queue, sent_columns);
    END LOOP;
END
$do$;

-- A batch's rows: takes the conversations' locks (`flowcore_lock_conversations`, with
-- everything else the batch's transaction will write), then inserts the inbox rows and
-- applies the claim changes, each in order. Answers, in the given order, each insert's id
-- and whether it is new, and whether each change's claim held.
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
    row_id int8;
    is_new boolean;
BEGIN
    IF cardinality(p_lock_inbox) + cardinality(p_lock_outbox) + cardinality(p_lock_orgs) > 0 THEN
        PERFORM flowcore_lock_conversations(p_lock_space, p_lock_inbox, p_lock_outbox, p_lock_orgs, p_lock_numbers,
                                            p_lock_contacts);
    END IF;
    inserted_ids := '{}';
    inserted_new := '{}';
    finished := '{}';
    FOR k IN 1 .. coalesce(cardinality(p_in_org), 0) LOOP
        SELECT r.id, r.inserted INTO row_id, is_new
        FROM flowcore_insert_inbox_row(p_in_org[k], p_in_number[k], p_in_contact[k], p_in_message[k], p_in_kind[k],
                                       p_in_payload[k], p_in_received[k], p_in_due[k]) AS r;
        inserted_ids := inserted_ids || row_id;
        inserted_new := inserted_new || is_new;
    END LOOP;
    FOR k IN 1 .. coalesce(cardinality(p_fin_id), 0) LOOP
        IF p_fin_outbox[k] THEN
            finished := finished || flowcore_finish_outbox_row(p_fin_change[k], p_fin_org[k], p_fin_id[k],
                                                               p_fin_attempt[k], p_fin_time[k], p_fin_text[k]);
        ELSE
            finished := finished || flowcore_finish_inbox_row(p_fin_change[k], p_fin_org[k], p_fin_id[k],
                                                              p_fin_attempt[k], p_fin_time[k], p_fin_text[k]);
        END IF;
    END LOOP;
END
$fn$;
