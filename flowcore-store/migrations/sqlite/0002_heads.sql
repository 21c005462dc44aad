-- flowcore-store schema v2 (SQLite): conversation heads, so that a claim's cost does not
-- grow with the rows waiting behind busy conversations.
--
-- `head` marks a row that may be its conversation's first unfinished row in (due_at, id)
-- order; the first unfinished row always carries it. Claims walk only the marked rows (a
-- partial index as small as the number of waiting conversations) and check the order
-- again, because a row inserted before an existing head (a message due before a pending
-- wake-up) leaves the old mark in place. Triggers keep the marks, so every write path
-- (single, grouped, multi-row) maintains them; SQLite runs one writer at a time, so a
-- trigger always sees the rows every earlier write left.

ALTER TABLE inbox ADD COLUMN head INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN head INTEGER NOT NULL DEFAULT 0;

UPDATE inbox SET head = 1
WHERE status IN ('pending', 'claimed')
  AND NOT EXISTS (SELECT 1 FROM inbox e
                  WHERE e.org_id = inbox.org_id AND e.business_number_id = inbox.business_number_id
                    AND e.contact_id = inbox.contact_id AND e.status IN ('pending', 'claimed')
                    AND (e.due_at < inbox.due_at OR (e.due_at = inbox.due_at AND e.id < inbox.id)));
UPDATE outbox SET head = 1
WHERE status IN ('pending', 'claimed')
  AND NOT EXISTS (SELECT 1 FROM outbox e
                  WHERE e.org_id = outbox.org_id AND e.business_number_id = outbox.business_number_id
                    AND e.contact_id = outbox.contact_id AND e.status IN ('pending', 'claimed')
                    AND (e.due_at < outbox.due_at OR (e.due_at = outbox.due_at AND e.id < outbox.id)));

-- What claims walk. They replace the walks over every open row.
CREATE INDEX IF NOT EXISTS inbox_heads ON inbox (due_at, id) WHERE head = 1 AND status IN ('pending', 'claimed');
CREATE INDEX IF NOT EXISTS outbox_heads ON outbox (due_at, id) WHERE head = 1 AND status IN ('pending', 'claimed');
DROP INDEX IF EXISTS inbox_open;
DROP INDEX IF EXISTS outbox_open;

-- A new row is a head when nothing of its conversation is waiting before it (every stored
-- row has a smaller id, so it comes first when its due time is not later).
CREATE TRIGGER IF NOT EXISTS inbox_head_on_insert AFTER INSERT ON inbox
WHEN NEW.status IN ('pending', 'claimed')
BEGIN
    UPDATE inbox SET head = 1
    WHERE id = NEW.id
      AND NOT EXISTS (SELECT 1 FROM inbox e
                      WHERE e.org_id = NEW.org_id AND e.business_number_id = NEW.business_number_id
                        AND e.contact_id = NEW.contact_id AND e.status IN ('pending', 'claimed')
                        AND e.id <> NEW.id AND e.due_at <= NEW.due_at);
END;
CREATE TRIGGER IF NOT EXISTS outbox_head_on_insert AFTER INSERT ON outbox
WHEN NEW.status IN ('pending', 'claimed')
BEGIN
    UPDATE outbox SET head = 1
    WHERE id = NEW.id
      AND NOT EXISTS (SELECT 1 FROM outbox e
                      WHERE e.org_id = NEW.org_id AND e.business_number_id = NEW.business_number_id
                        AND e.contact_id = NEW.contact_id AND e.status IN ('pending', 'claimed')
                        AND e.id <> NEW.id AND e.due_at <= NEW.due_at);
END;

-- A row leaving the queue (done, failed) hands the mark to its conversation's next row.
CREATE TRIGGER IF NOT EXISTS inbox_head_on_finish AFTER UPDATE OF status ON inbox
WHEN OLD.status IN ('pending', 'claimed') AND NEW.status NOT IN ('pending', 'claimed')
BEGIN
    UPDATE inbox SET head = 1
    WHERE head = 0
      AND id = (SELECT n.id FROM inbox n
                WHERE n.org_id = NEW.org_id AND n.business_number_id = NEW.business_number_id
                  AND n.contact_id = NEW.contact_id AND n.status IN ('pending', 'claimed')
                ORDER BY n.due_at, n.id LIMIT 1);
END;
CREATE TRIGGER IF NOT EXISTS outbox_head_on_finish AFTER UPDATE OF status ON outbox
WHEN OLD.status IN ('pending', 'claimed') AND NEW.status NOT IN ('pending', 'claimed')
BEGIN
    UPDATE outbox SET head = 1
    WHERE head = 0
      AND id = (SELECT n.id FROM outbox n
                WHERE n.org_id = NEW.org_id AND n.business_number_id = NEW.business_number_id
                  AND n.contact_id = NEW.contact_id AND n.status IN ('pending', 'claimed')
                ORDER BY n.due_at, n.id LIMIT 1);
END;
