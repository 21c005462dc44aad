//! The conformance suite and bad-input checks on the SQLite backend (temp files).

use std::sync::Arc;

use flowcore::Timestamp;
use flowcore_store::*;

async fn fresh(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
    let url = format!("sqlite://{}", dir.path().join(name).display());
    SqliteStore::open(&url, SqliteOptions::default()).await.expect("open sqlite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let passed = testkit::run_suite(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = &dir;
        async move { Arc::new(fresh(dir, &format!("case-{n}.db")).await) as Arc<dyn Store> }
    })
    .await;
    assert_eq!(passed, testkit::CASES.len());
}

#[tokio::test]
async fn open_creates_the_file_and_reopens_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub-created.db");
    let url = format!("sqlite://{}", path.display());
    let store = open(&url).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    assert!(path.exists());
    store.register_organization("acme").await.unwrap();
    let v = store.publish_flow("acme", "f", "{}", Timestamp::EPOCH).await.unwrap();
    store.close().await;
    // Migrations run again on open without harm; the data is still there.
    let again = open(&url).await.unwrap();
    assert_eq!(again.get_flow("acme", "f", None).await.unwrap().unwrap().version, v);
    // `sqlite::memory:` works too.
    let mem = open("sqlite::memory:").await.unwrap();
    mem.register_organization("x").await.unwrap();
    assert!(mem.organization_exists("x").await.unwrap());
}

#[tokio::test]
async fn corrupt_state_is_a_typed_error_for_that_session_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(&dir, "corrupt.db").await;
    store.register_organization("acme").await.unwrap();
    let now = Timestamp::from_unix_seconds(1_700_000_000);
    let [good, bad, future, engine_future] =
        ["good", "bad", "future", "engine-future"].map(|contact| SessionKey::new("acme", "b", contact, "f"));
    let new = |key: &SessionKey, tag| SessionWrite {
        key: key.clone(),
        expected_version: 0,
        flow_version: 1,
        cohort: None,
        session: testkit::sample_state(tag),
        status: SessionStatus::Active,
        now,
    };
    for key in [&good, &bad, &future, &engine_future] {
        store.save_session(new(key, "s")).await.unwrap();
    }
    // Damage the rows behind the store's back, through a connection of our own.
    let db = rusqlite::Connection::open(dir.path().join("corrupt.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.execute_batch(
        r#"UPDATE sessions SET state = '{not json' WHERE contact_id = 'bad';
           UPDATE sessions SET state_schema = 99 WHERE contact_id = 'future';
           UPDATE sessions SET state = '{"v":9,"f":"lead","s":"input"}' WHERE contact_id = 'engine-future';"#,
    )
    .unwrap();
    let err = store.load_session(&engine_future).await.unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedStateVersion { found: 9, supported: 1, .. }), "{err:?}");
    let err = store.load_session(&bad).await.unwrap_err();
    assert!(matches!(err, StoreError::CorruptState { .. }), "{err:?}");
    let err = store.load_session(&future).await.unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedStateVersion { found: 99, .. }), "{err:?}");
    assert!(err.to_string().contains("99"));
    // Everything else still works: the good session, listings, a fresh save over the bad one
    // after closing it.
    assert!(store.load_session(&good).await.unwrap().is_some());
    assert_eq!(store.list_active_sessions("acme", Page::default()).await.unwrap().len(), 4);
    assert!(store.close_session(&bad, now).await.unwrap());
    store.save_session(new(&bad, "new")).await.unwrap();
    assert!(store.load_session(&bad).await.unwrap().is_some());
}

#[tokio::test]
async fn bad_urls_are_typed_errors() {
    let err = open("nosuch://x").await.err().unwrap();
    assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err:?}");
    let err = SqliteStore::open("sqlite:///nonexistent-dir/for/sure/x.db", SqliteOptions::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
}
