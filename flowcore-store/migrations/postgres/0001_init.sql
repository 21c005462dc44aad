-- flowcore-store schema v1 (PostgreSQL). Times are unix milliseconds (BIGINT).
--
-- The inbox and the outbox are queues handed out one conversation at a time, in (due_at, id)
-- order. `head` marks the first unfinished row of its conversation: claims walk only the
-- heads (a partial index as small as the number of busy conversations), so their cost does
-- not grow with the rows waiting behind them. The store keeps `head` true on every
-- conversation's first unfinished row (finishes under a per-conversation advisory lock,
-- inbox inserts leaning on a row lock; see postgres.rs). A row that stopped being first
-- (an earlier one was inserted) keeps its mark, and claims check the order again anyway.

CREATE TABLE IF NOT EXISTS organizations (
    id         TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS sessions (
    id                 BIGSERIAL PRIMARY KEY,
    org_id             TEXT    NOT NULL REFERENCES organizations(id),
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
    closed_at          BIGINT
);
-- At most one active session per key; closed ones are history.
CREATE UNIQUE INDEX IF NOT EXISTS sessions_active_key
    ON sessions (org_id, business_number_id, contact_id, flow_id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS sessions_org_status ON sessions (org_id, status, updated_at);
CREATE INDEX IF NOT EXISTS sessions_org_created ON sessions (org_id, created_at);

CREATE TABLE IF NOT EXISTS message_log (
    id                 BIGSERIAL PRIMARY KEY,
    org_id             TEXT    NOT NULL REFERENCES organizations(id),
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
CREATE INDEX IF NOT EXISTS message_log_conversation ON message_log (org_id, business_number_id, contact_id, id);
CREATE INDEX IF NOT EXISTS message_log_org_at ON message_log (org_id, at);

CREATE TABLE IF NOT EXISTS inbox (
    id                 BIGSERIAL PRIMARY KEY,
    org_id             TEXT    NOT NULL REFERENCES organizations(id),
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
    UNIQUE (org_id, message_id)
);
-- What claims walk: the conversations' first unfinished rows, in order.
CREATE INDEX IF NOT EXISTS inbox_heads ON inbox (due_at, id) WHERE head AND status IN ('pending', 'claimed');
-- A conversation's unfinished rows in order: finding its first one, checking a claim's turn.
-- The contact leads (the three are always given together): a lookup of one row by id and
-- organization must not mistake these for a way in by organization.
CREATE INDEX IF NOT EXISTS inbox_open_conversation
    ON inbox (contact_id, business_number_id, org_id, due_at, id) WHERE status IN ('pending', 'claimed');
-- Rows out with a worker: one live lease per conversation.
CREATE INDEX IF NOT EXISTS inbox_claimed
    ON inbox (contact_id, business_number_id, org_id) WHERE status = 'claimed';
CREATE INDEX IF NOT EXISTS inbox_finished ON inbox (org_id, finished_at) WHERE status IN ('done', 'failed');

CREATE TABLE IF NOT EXISTS outbox (
    id                 BIGSERIAL PRIMARY KEY,
    org_id             TEXT    NOT NULL REFERENCES organizations(id),
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
-- What claims walk: the conversations' first unfinished rows, in order.
CREATE INDEX IF NOT EXISTS outbox_heads ON outbox (due_at, id) WHERE head AND status IN ('pending', 'claimed');
-- A conversation's unfinished rows in order: finding its first one, checking a claim's turn.
-- The contact leads (the three are always given together): a lookup of one row by id and
-- organization must not mistake these for a way in by organization.
CREATE INDEX IF NOT EXISTS outbox_open_conversation
    ON outbox (contact_id, business_number_id, org_id, due_at, id) WHERE status IN ('pending', 'claimed');
-- Rows out with a worker: one live lease per conversation.
CREATE INDEX IF NOT EXISTS outbox_claimed
    ON outbox (contact_id, business_number_id, org_id) WHERE status = 'claimed';
CREATE INDEX IF NOT EXISTS outbox_wamid ON outbox (org_id, wamid) WHERE wamid IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_finished ON outbox (org_id, finished_at) WHERE status IN ('done', 'failed');

CREATE TABLE IF NOT EXISTS flows (
    org_id       TEXT    NOT NULL REFERENCES organizations(id),
    flow_id      TEXT    NOT NULL,
    version      BIGINT NOT NULL,
    definition   TEXT    NOT NULL,
    published_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, flow_id, version)
);
