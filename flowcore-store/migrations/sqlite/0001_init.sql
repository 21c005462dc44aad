-- flowcore-store schema v1 (SQLite). Times are unix milliseconds (INTEGER).

CREATE TABLE IF NOT EXISTS organizations (
    id         TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS sessions (
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
    closed_at          INTEGER
);
-- At most one active session per key; closed ones are history.
CREATE UNIQUE INDEX IF NOT EXISTS sessions_active_key
    ON sessions (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS sessions_org_status ON sessions (org_id, status, updated_at);
CREATE INDEX IF NOT EXISTS sessions_org_created ON sessions (org_id, created_at);

CREATE TABLE IF NOT EXISTS message_log (
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
CREATE INDEX IF NOT EXISTS message_log_conversation ON message_log (org_id, business_number_id, contact_id, id);
CREATE INDEX IF NOT EXISTS message_log_org_at ON message_log (org_id, at);

CREATE TABLE IF NOT EXISTS inbox (
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
    UNIQUE (org_id, message_id)
);
CREATE INDEX IF NOT EXISTS inbox_open ON inbox (due_at, id) WHERE status IN ('pending', 'claimed');
CREATE INDEX IF NOT EXISTS inbox_open_conversation
    ON inbox (org_id, business_number_id, contact_id, due_at, id) WHERE status IN ('pending', 'claimed');
CREATE INDEX IF NOT EXISTS inbox_finished ON inbox (org_id, finished_at) WHERE status IN ('done', 'failed');

CREATE TABLE IF NOT EXISTS outbox (
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
    finished_at        INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_open ON outbox (due_at, id) WHERE status IN ('pending', 'claimed');
CREATE INDEX IF NOT EXISTS outbox_open_conversation
    ON outbox (org_id, business_number_id, contact_id, due_at, id) WHERE status IN ('pending', 'claimed');
CREATE INDEX IF NOT EXISTS outbox_wamid ON outbox (org_id, wamid) WHERE wamid IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_finished ON outbox (org_id, finished_at) WHERE status IN ('done', 'failed');

CREATE TABLE IF NOT EXISTS flows (
    org_id       TEXT    NOT NULL REFERENCES organizations(id),
    flow_id      TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    definition   TEXT    NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, flow_id, version)
);
