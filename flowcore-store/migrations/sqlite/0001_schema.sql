-- flowcore-store schema (SQLite). Times are unix milliseconds (INTEGER).
--
-- The inbox and the outbox are queues handed out one conversation at a time, in (due_at, id)
-- order. `head` marks a row that may be its conversation's first unfinished row; the first
-- unfinished row always carries it. Claims walk only the marked rows (a partial index as
-- small as the number of waiting conversations), so their cost does not grow with the rows
-- waiting behind busy conversations, and they check the order again, because a row
-- inserted before an existing head (a message due before a pending wake-up) leaves the old
-- mark in place. Triggers keep the marks, so every write path (single, grouped, multi-row)
-- maintains them; SQLite runs one writer at a time, so a trigger always sees the rows every
-- earlier write left.

CREATE TABLE organizations (
    id         TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

-- `cohort` is the cohort the session was created in (such as the A/B test variant its
-- contact was assigned), which metrics count sessions by: written once, with the session.
CREATE TABLE sessions (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id             TEXT    NOT NULL REFERENCES organizations(id),
    business_number_id TEXT    NOT NULL,
    contact_id         TEXT    NOT NULL,
    flow_id            TEXT    NOT NULL,
    flow_version       INTEGER NOT NULL,
    version            INTEGER NOT NULL,
    status             TEXT    NOT NULL,
    state_schema       INTEGER NOT NULL,
    state              TEXT    NOT NULL,
    current_node       TEXT,
    wake_at            INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    closed_at          INTEGER,
    cohort             TEXT
);

CREATE TABLE message_log (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id             TEXT    NOT NULL REFERENCES organizations(id),
    business_number_id TEXT    NOT NULL,
    contact_id         TEXT    NOT NULL,
    flow_id            TEXT,
    direction          TEXT    NOT NULL,
    content_text       TEXT,
    content_json       TEXT,
    node_id            TEXT,
    wamid              TEXT,
    at                 INTEGER NOT NULL,
    metadata           TEXT    NOT NULL
);

CREATE TABLE inbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id             TEXT    NOT NULL REFERENCES organizations(id),
    business_number_id TEXT    NOT NULL,
    contact_id         TEXT    NOT NULL,
    message_id         TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    received_at        INTEGER NOT NULL,
    due_at             INTEGER NOT NULL,
    status             TEXT    NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    lease_until        INTEGER,
    retry_at           INTEGER,
    last_error         TEXT,
    finished_at        INTEGER,
    head               INTEGER NOT NULL DEFAULT 0,
    UNIQUE (org_id, message_id)
);

CREATE TABLE outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id             TEXT    NOT NULL REFERENCES organizations(id),
    business_number_id TEXT    NOT NULL,
    contact_id         TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    inbox_id           INTEGER,
    due_at             INTEGER NOT NULL,
    status             TEXT    NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    lease_until        INTEGER,
    retry_at           INTEGER,
    last_error         TEXT,
    wamid              TEXT,
    sent_at            INTEGER,
    delivery           TEXT,
    delivery_rank      INTEGER NOT NULL DEFAULT 0,
    delivery_at        INTEGER,
    finished_at        INTEGER,
    head               INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE flows (
    org_id       TEXT    NOT NULL REFERENCES organizations(id),
    flow_id      TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    definition   TEXT    NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, flow_id, version)
);

-- A turn rewrites its session's row (state, version, node, wake-up, updated_at): no index
-- holds a column a turn changes, so a turn moves no index entry (work on the one write
-- connection, which the server's throughput waits on).
--
-- At most one active session per key; closed ones are history. It also finds an
-- organization's active sessions (it leads with the organization), sorted or filtered on
-- `updated_at` afterwards: by last activity, and the expired ones for the purge.
CREATE UNIQUE INDEX sessions_active_key
    ON sessions (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active';
CREATE INDEX sessions_org_created ON sessions (org_id, created_at);
-- Closed sessions past retention, for the purge.
CREATE INDEX sessions_org_closed ON sessions (org_id, closed_at) WHERE status = 'closed';

CREATE INDEX message_log_conversation ON message_log (org_id, business_number_id, contact_id, id);
CREATE INDEX message_log_org_at ON message_log (org_id, at);
-- A contact's latest inbound entries, for the per-contact rate limit (counted from the shared
-- log, so it holds across server instances and restarts): a short range read, not a walk
-- through the conversation's history. Partial: only inbound entries pay for it.
CREATE INDEX message_log_inbound
    ON message_log (org_id, business_number_id, contact_id, at) WHERE direction = 'in';

-- A conversation's unfinished rows in order: finding its first one, checking a claim's turn.
CREATE INDEX inbox_open_conversation
    ON inbox (org_id, business_number_id, contact_id, due_at, id) WHERE status IN ('pending', 'claimed');
CREATE INDEX inbox_finished ON inbox (org_id, finished_at) WHERE status IN ('done', 'failed');
-- What claims walk: the rows marked as heads, in order.
CREATE INDEX inbox_heads ON inbox (due_at, id) WHERE head = 1 AND status IN ('pending', 'claimed');

CREATE INDEX outbox_open_conversation
    ON outbox (org_id, business_number_id, contact_id, due_at, id) WHERE status IN ('pending', 'claimed');
CREATE INDEX outbox_wamid ON outbox (org_id, wamid) WHERE wamid IS NOT NULL;
CREATE INDEX outbox_finished ON outbox (org_id, finished_at) WHERE status IN ('done', 'failed');
CREATE INDEX outbox_heads ON outbox (due_at, id) WHERE head = 1 AND status IN ('pending', 'claimed');

-- A new row is a head when nothing of its conversation is waiting before it (every stored
-- row has a smaller id, so it comes first when its due time is not later).
CREATE TRIGGER inbox_head_on_insert AFTER INSERT ON inbox
WHEN NEW.status IN ('pending', 'claimed')
BEGIN
    UPDATE inbox SET head = 1
    WHERE id = NEW.id
      AND NOT EXISTS (SELECT 1 FROM inbox e
                      WHERE e.org_id = NEW.org_id AND e.business_number_id = NEW.business_number_id
                        AND e.contact_id = NEW.contact_id AND e.status IN ('pending', 'claimed')
                        AND e.id <> NEW.id AND e.due_at <= NEW.due_at);
END;
-- Replies are written marked when they are written claimed for the caller (see
-- `Commit::claim_replies_until`): a claimed reply is its conversation's first, or follows
-- one of the same caller, so no mark needs handing on when the one before it finishes (a
-- head that is not its conversation's first is never claimed). The trigger skips those: it
-- would rewrite the row with the mark it already has.
CREATE TRIGGER outbox_head_on_insert AFTER INSERT ON outbox
WHEN NEW.status IN ('pending', 'claimed') AND NEW.head = 0
BEGIN
    UPDATE outbox SET head = 1
    WHERE id = NEW.id
      AND NOT EXISTS (SELECT 1 FROM outbox e
                      WHERE e.org_id = NEW.org_id AND e.business_number_id = NEW.business_number_id
                        AND e.contact_id = NEW.contact_id AND e.status IN ('pending', 'claimed')
                        AND e.id <> NEW.id AND e.due_at <= NEW.due_at);
END;

-- A row leaving the queue (done, failed) hands the mark to its conversation's next row.
CREATE TRIGGER inbox_head_on_finish AFTER UPDATE OF status ON inbox
WHEN OLD.status IN ('pending', 'claimed') AND NEW.status NOT IN ('pending', 'claimed')
BEGIN
    UPDATE inbox SET head = 1
    WHERE head = 0
      AND id = (SELECT n.id FROM inbox n
                WHERE n.org_id = NEW.org_id AND n.business_number_id = NEW.business_number_id
                  AND n.contact_id = NEW.contact_id AND n.status IN ('pending', 'claimed')
                ORDER BY n.due_at, n.id LIMIT 1);
END;
CREATE TRIGGER outbox_head_on_finish AFTER UPDATE OF status ON outbox
WHEN OLD.status IN ('pending', 'claimed') AND NEW.status NOT IN ('pending', 'claimed')
BEGIN
    UPDATE outbox SET head = 1
    WHERE head = 0
      AND id = (SELECT n.id FROM outbox n
                WHERE n.org_id = NEW.org_id AND n.business_number_id = NEW.business_number_id
                  AND n.contact_id = NEW.contact_id AND n.status IN ('pending', 'claimed')
                ORDER BY n.due_at, n.id LIMIT 1);
END;
