-- flowcore-store schema (SQLite). Times are unix milliseconds (INTEGER).

CREATE TABLE organizations (
    id         TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

-- `cohort` is written once, with the session: metrics count sessions by the cohort (such
-- as an A/B test variant) they started in.
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
    status             TEXT    NOT NULL DEFAULT 'pending',
    attempts           INTEGER NOT NULL DEFAULT 0,
    lease_until        INTEGER,
    retry_at           INTEGER,
    last_error         TEXT,
    finished_at        INTEGER,
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
    status             TEXT    NOT NULL DEFAULT 'pending',
    attempts           INTEGER NOT NULL DEFAULT 0,
    lease_until        INTEGER,
    retry_at           INTEGER,
    last_error         TEXT,
    wamid              TEXT,
    sent_at            INTEGER,
    delivery           TEXT,
    delivery_rank      INTEGER NOT NULL DEFAULT 0,
    delivery_at        INTEGER,
    finished_at        INTEGER
);

-- Where each conversation's two queues stand, which is all a claim reads: `*_due` is when
-- the queue's first unfinished row in (due_at, id) order may run (its due or retry time),
-- NULL when nothing is unfinished; `*_lease` is the latest lease of its claimed rows. A
-- conversation is claimed by its lease: its head is claimable once due with no live lease.
-- The store recomputes both from the rows each time it changes a conversation's rows.
CREATE TABLE conversations (
    org_id             TEXT    NOT NULL,
    business_number_id TEXT    NOT NULL,
    contact_id         TEXT    NOT NULL,
    inbox_due          INTEGER,
    inbox_lease        INTEGER,
    outbox_due         INTEGER,
    outbox_lease       INTEGER,
    PRIMARY KEY (org_id, business_number_id, contact_id)
) WITHOUT ROWID;

CREATE TABLE flows (
    org_id       TEXT    NOT NULL REFERENCES organizations(id),
    flow_id      TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    definition   TEXT    NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, flow_id, version)
);

-- At most one active session per key; it also finds a conversation's sessions. No index
-- holds a column a turn changes, so saving a turn moves no index entry.
CREATE UNIQUE INDEX sessions_active_key
    ON sessions (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active';
CREATE INDEX sessions_org_created ON sessions (org_id, created_at);
CREATE INDEX sessions_org_closed ON sessions (org_id, closed_at) WHERE status = 'closed';

CREATE INDEX message_log_conversation ON message_log (org_id, business_number_id, contact_id, id);
CREATE INDEX message_log_org_at ON message_log (org_id, at);
-- A contact's latest inbound entries, for the rate limit: a short range read.
CREATE INDEX message_log_inbound
    ON message_log (org_id, business_number_id, contact_id, at) WHERE direction = 'in';

-- A conversation's unfinished rows in order: its head, and what refreshes its row above.
CREATE INDEX inbox_open ON inbox (org_id, business_number_id, contact_id, due_at, id)
    WHERE status IN ('pending', 'claimed');
CREATE INDEX inbox_finished ON inbox (org_id, finished_at) WHERE status IN ('done', 'failed');
CREATE INDEX outbox_open ON outbox (org_id, business_number_id, contact_id, due_at, id)
    WHERE status IN ('pending', 'claimed');
CREATE INDEX outbox_finished ON outbox (org_id, finished_at) WHERE status IN ('done', 'failed');
CREATE INDEX outbox_wamid ON outbox (org_id, wamid) WHERE wamid IS NOT NULL;
-- A conversation's latest lease: one seek, even behind many replies piled up while Meta is down.
CREATE INDEX inbox_claimed ON inbox (org_id, business_number_id, contact_id, lease_until) WHERE status = 'claimed';
CREATE INDEX outbox_claimed ON outbox (org_id, business_number_id, contact_id, lease_until) WHERE status = 'claimed';

-- What claims walk: only conversations with something unfinished, soonest first.
CREATE INDEX conversations_inbox ON conversations (inbox_due) WHERE inbox_due IS NOT NULL;
CREATE INDEX conversations_outbox ON conversations (outbox_due) WHERE outbox_due IS NOT NULL;

PRAGMA user_version = 1;
