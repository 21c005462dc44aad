-- flowcore-store schema v9 (PostgreSQL): a turn updates its session in place.
--
-- Every turn rewrites its session's row (state, version, node, wake-up, updated_at). While
-- `sessions_org_status` indexed `updated_at`, each of those updates was a new row version
-- with an entry in every index of the table; with nothing vacuuming between turns, a busy
-- conversation's lookups then walked one dead entry per earlier turn (under the server load
-- bench, 72 buffers to read a session after 50 turns). Now no index holds a column a turn
-- changes, so PostgreSQL can update the row in place (a heap-only tuple: no index entry, and
-- the old versions pruned from the page as it is read), and the table leaves half of each
-- page free for those versions.
--
-- What the dropped index served, and how it is served now:
-- * an organization's active sessions by last activity: `sessions_active_key` finds them
--   (it leads with the organization), then they are sorted;
-- * expired active sessions, for the purge: the same, filtered on `updated_at`;
-- * closed sessions past retention, for the purge: `sessions_org_closed` below (closing a
--   session changes its status, so that update was never in place anyway).
DROP INDEX IF EXISTS sessions_org_status;
CREATE INDEX IF NOT EXISTS sessions_org_closed ON sessions (org_id, closed_at) WHERE status = 'closed';
ALTER TABLE sessions SET (fillfactor = 50);
