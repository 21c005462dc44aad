//! Opening a store from a URL.

use std::sync::Arc;

use crate::error::{StoreError, StoreResult};
use crate::traits::Store;

/// Opens the store a URL names, running its migrations:
///
/// | URL | backend | needs feature |
/// |---|---|---|
/// | `memory` or `memory://` | [`MemoryStore`](crate::MemoryStore) (nothing persists) | `memory` |
/// | `sqlite://PATH`, `sqlite:PATH` (the file is created if missing; `sqlite::memory:` is a private in-memory database) | [`SqliteStore`](crate::SqliteStore) | `sqlite` |
/// | `postgres://…`, `postgresql://…` | [`PostgresStore`](crate::PostgresStore) | `postgres` |
///
/// Anything else, or a scheme whose feature is not compiled in, is
/// [`StoreError::UnsupportedUrl`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = flowcore_store::open("memory").await?;
/// assert_eq!(store.backend(), "memory");
/// assert!(flowcore_store::open("mysql://nope").await.is_err());
/// # Ok::<(), flowcore_store::StoreError>(())
/// # }).unwrap();
/// ```
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    let lower = url.to_ascii_lowercase();
    if lower == "memory" || lower.starts_with("memory:") {
        #[cfg(feature = "memory")]
        return Ok(Arc::new(crate::MemoryStore::new()));
    }
    if lower.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        return Ok(Arc::new(crate::SqliteStore::open(url, crate::SqliteOptions::default()).await?));
    }
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(crate::PostgresStore::open(url, crate::PostgresOptions::default()).await?));
    }
    Err(StoreError::UnsupportedUrl(redact(url)))
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}://{}:***{}", &url[..scheme_end], &userinfo[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
