-- flowcore-store schema v5 (SQLite): units of work can claim their replies for the caller.
--
-- A reply used to be written pending, then claimed by the sender in a write of its own (one
-- more update of the row and its index entries, in the one writer's batches) before it went
-- out. When the caller asks (`Commit::claim_replies_until`) and the reply's conversation has
-- no stored unfinished reply, it is now written claimed for the caller, and marked as a
-- head as it is written: a claimed reply is its conversation's first, or follows one of the
-- same caller, so no mark needs handing on when the one before it finishes (a head that is
-- not its conversation's first is never claimed, as claims check the order again).
--
-- The trigger that marks new heads now skips rows written marked: it would rewrite the row
-- with the mark it already has.
DROP TRIGGER IF EXISTS outbox_head_on_insert;
CREATE TRIGGER IF NOT EXISTS outbox_head_on_insert AFTER INSERT ON outbox
WHEN NEW.status IN ('pending', 'claimed') AND NEW.head = 0
BEGIN
    UPDATE outbox SET head = 1
    WHERE id = NEW.id
      AND NOT EXISTS (SELECT 1 FROM outbox e
                      WHERE e.org_id = NEW.org_id AND e.business_number_id = NEW.business_number_id
                        AND e.contact_id = NEW.contact_id AND e.status IN ('pending', 'claimed')
                        AND e.id <> NEW.id AND e.due_at <= NEW.due_at);
END;
