//! The store's error type.

/// Why a store operation failed, as something a caller can act on (reload after a
/// [`Conflict`](StoreError::Conflict), drop the result after a [`LeaseLost`](StoreError::LeaseLost)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A compare-and-set save found another version than expected; nothing was written.
    #[error("version conflict on session {key}: expected version {expected}, found {found:?}")]
    Conflict {
        /// The session's key, as `org/business/contact/flow`.
        key: String,
        /// The version the caller read (0 = "no active session").
        expected: i64,
        /// The version actually stored for the active session, `None` when there is none.
        found: Option<i64>,
    },
    /// The organization was never [registered](crate::Organizations::register_organization).
    #[error("unknown organization {0:?}")]
    UnknownOrganization(String),
    /// A row addressed by id does not exist in this organization.
    #[error("{what} {id} not found")]
    NotFound {
        /// The kind of row: `"inbox event"`, `"outbox message"`, `"flow"`, …
        what: &'static str,
        /// The id that was looked up.
        id: String,
    },
    /// The claim is no longer held: the row was claimed again, reclaimed or finished since.
    #[error("lease lost on {what} {id} (attempt {attempt})")]
    LeaseLost {
        /// `"inbox event"` or `"outbox message"`.
        what: &'static str,
        /// The row id.
        id: i64,
        /// The attempt number the caller held.
        attempt: i64,
    },
    /// A stored session state could not be decoded. Only this session is affected.
    #[error("corrupt state in session {session_id}: {reason}")]
    CorruptState {
        /// The session row's id.
        session_id: i64,
        /// What the decoder said.
        reason: String,
    },
    /// A stored session state was written by a newer, unknown schema version.
    #[error("session {session_id} has state schema version {found}, this release reads up to {supported}")]
    UnsupportedStateVersion {
        /// The session row's id.
        session_id: i64,
        /// The schema version found in the row.
        found: i64,
        /// The newest schema version this release understands.
        supported: i64,
    },
    /// A stored session cannot run on its flow version any more (its node is gone, say).
    #[error("session {session_id} does not fit flow {flow_id} v{flow_version}: {reason}")]
    IncompatibleState {
        /// The session row's id.
        session_id: i64,
        /// The flow id.
        flow_id: String,
        /// The flow version the session runs on.
        flow_version: i64,
        /// What the engine said.
        reason: String,
    },
    /// A value could not be encoded for storage, or a caller-supplied value is out of range.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The store (its connection pool) was closed.
    #[error("store is closed")]
    Closed,
    /// Applying the embedded migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The database reported an error (connection lost, disk full, …).
    #[error("database error: {0}")]
    Database(String),
    /// A database URL this crate cannot open (unknown scheme or backend not compiled in).
    #[error("unsupported database url {0:?}")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// True for [`StoreError::Conflict`]: reload the session and retry the turn.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

#[cfg(feature = "postgres")]
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolClosed => StoreError::Closed,
            other => StoreError::Database(other.to_string()),
        }
    }
}

#[cfg(feature = "postgres")]
impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migration(e.to_string())
    }
}

/// The result type of every store operation.
pub type StoreResult<T> = Result<T, StoreError>;
