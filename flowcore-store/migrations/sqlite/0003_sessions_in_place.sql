-- flowcore-store schema v3 (SQLite): no index holds a column a turn changes.
--
-- Every turn rewrites its session's row (state, version, node, wake-up, updated_at). While
-- `sessions_org_status` indexed `updated_at`, each turn also moved the session's entry in
-- that index: work on the one write connection, which the server's throughput waits on.
-- What the index served is served so now:
-- * an organization's active sessions by last activity: `sessions_active_key` finds them
--   (it leads with the organization), then they are sorted;
-- * expired active sessions, for the purge: the same, filtered on `updated_at`;
-- * closed sessions past retention, for the purge: `sessions_org_closed` below.
DROP INDEX IF EXISTS sessions_org_status;
CREATE INDEX IF NOT EXISTS sessions_org_closed ON sessions (org_id, closed_at) WHERE status = 'closed';
