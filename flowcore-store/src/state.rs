//! Encoding of the engine's session state for storage.
//!
//! A row stores the state as `flowcore::Session` JSON text plus the store's own envelope
//! version (`state_schema`). Two version checks guard a load: the envelope's (this crate's
//! [`STATE_SCHEMA_VERSION`]) and the engine's (`flowcore::STATE_VERSION`, inside the JSON).
//! Either one failing is [`StoreError::UnsupportedStateVersion`]; undecodable text is
//! [`StoreError::CorruptState`].

use flowcore::{SessionError, Timestamp};

use crate::error::{StoreError, StoreResult};

/// The engine's session state, as the store persists it (re-exported `flowcore::Session`).
pub use flowcore::Session;

/// The envelope version this release writes (and the newest it reads).
pub const STATE_SCHEMA_VERSION: i64 = 1;

#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn encode(session: &Session) -> String {
    session.to_json()
}

#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn decode(session_id: i64, schema: i64, text: &str) -> StoreResult<Session> {
    if !(1..=STATE_SCHEMA_VERSION).contains(&schema) {
        return Err(StoreError::UnsupportedStateVersion { session_id, found: schema, supported: STATE_SCHEMA_VERSION });
    }
    Session::from_json(text).map_err(|e| match e {
        SessionError::UnsupportedVersion { found, supported } => {
            StoreError::UnsupportedStateVersion { session_id, found: i64::from(found), supported: i64::from(supported) }
        }
        other => StoreError::CorruptState { session_id, reason: other.to_string() },
    })
}

/// (current node, wake-up time) of a state, recorded beside it for listings.
#[cfg_attr(not(any(feature = "memory", feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn meta(session: &Session) -> (Option<String>, Option<Timestamp>) {
    (session.current_node().map(str::to_owned), session.wake_at())
}
