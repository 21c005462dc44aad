//! The conformance suite and bad-input checks on PostgreSQL.
//!
//! Runs when `FLOWCORE_TEST_POSTGRES_URL` is set (CI sets it to
//! `postgres://postgres@127.0.0.1:5432/test`); prints a skip line otherwise. Every store lives
//! in its own fresh schema, dropped at the end, so runs can overlap and leave nothing behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use flowcore::Timestamp;
use flowcore_store::*;

fn url() -> Option<String> {
    match std::env::var("FLOWCORE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SKIPPED: PostgreSQL tests need FLOWCORE_TEST_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/test)");
            None
        }
    }
}

fn schema_name() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("flowcore_test_{}_{}_{}", std::process::id(), nanos % 1_000_000_000, COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// Creates stores in fresh schemas and drops them all on `cleanup`.
struct Schemas {
    url: String,
    created: Mutex<Vec<String>>,
}

impl Schemas {
    fn new(url: String) -> Self {
        Schemas { url, created: Mutex::default() }
    }

    async fn store(&self) -> PostgresStore {
        let schema = schema_name();
        self.created.lock().unwrap().push(schema.clone());
        let options = PostgresOptions::default().with_schema(schema).with_max_connections(12);
        PostgresStore::open(&self.url, options).await.expect("open postgres")
    }

    async fn cleanup(&self) {
        let admin = PostgresStore::open(&self.url, PostgresOptions::default().with_schema(schema_name()))
            .await
            .expect("admin connection");
        let mut schemas = self.created.lock().unwrap().clone();
        schemas.push(sqlx::query_scalar::<_, String>("SELECT current_schema()").fetch_one(admin.pool()).await.unwrap());
        for s in schemas {
            sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {s} CASCADE")).execute(admin.pool()).await.unwrap();
        }
        admin.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_passes_the_conformance_suite() {
    let Some(url) = url() else { return };
    let schemas = Schemas::new(url);
    let passed = testkit::run_suite(|| async { Arc::new(schemas.store().await) as Arc<dyn Store> }).await;
    assert_eq!(passed, testkit::CASES.len());
    schemas.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_inbox() {
    // Two independent stores (two pools, as two server instances would have) on one schema.
    let Some(url) = url() else { return };
    let schemas = Schemas::new(url.clone());
    let first = schemas.store().await;
    let schema = schemas.created.lock().unwrap()[0].clone();
    let second = PostgresStore::open(&url, PostgresOptions::default().with_schema(schema)).await.unwrap();
    first.register_organization("acme").await.unwrap();
    let now = Timestamp::from_unix_seconds(1_700_000_000);
    for c in 0..10 {
        for i in 0..5 {
            let chat = ConversationKey::new("acme", "b", format!("c{c}"));
            let e = NewInboxEvent::message(chat, format!("m{c}-{i}"), serde_json::json!({}), now);
            second.insert_inbox(e).await.unwrap();
        }
    }
    let stores: [Arc<dyn Store>; 2] = [Arc::new(first), Arc::new(second)];
    let handled = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let store = stores[w % 2].clone();
        let handled = handled.clone();
        tasks.spawn(async move {
            let mut idle = 0;
            while idle < 20 {
                let req = ClaimRequest::any(now, std::time::Duration::from_secs(60), 3);
                let batch = store.claim_inbox(&req).await.unwrap();
                if batch.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                for e in batch {
                    handled.lock().unwrap().push(e.message_id.clone());
                    store.complete_inbox("acme", e.claim(), now).await.unwrap();
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let mut handled = handled.lock().unwrap().clone();
    handled.sort();
    let before = handled.len();
    handled.dedup();
    assert_eq!((before, handled.len()), (50, 50), "each event exactly once");
    for s in &stores {
        s.close().await;
    }
    schemas.cleanup().await;
}

#[tokio::test]
async fn corrupt_state_and_closed_pool_are_typed_errors() {
    let Some(url) = url() else { return };
    let schemas = Schemas::new(url);
    let store = schemas.store().await;
    store.register_organization("acme").await.unwrap();
    let now = Timestamp::from_unix_seconds(1_700_000_000);
    let bad = SessionKey::new("acme", "b", "bad", "f");
    let good = SessionKey::new("acme", "b", "good", "f");
    for key in [&bad, &good] {
        let w = SessionWrite {
            key: key.clone(),
            expected_version: 0,
            flow_version: 1,
            cohort: None,
            session: testkit::sample_state("s"),
            status: SessionStatus::Active,
            now,
        };
        store.save_session(w).await.unwrap();
    }
    sqlx::query("UPDATE sessions SET state = '{not json' WHERE contact_id = 'bad'")
        .execute(store.pool())
        .await
        .unwrap();
    let err = store.load_session(&bad).await.unwrap_err();
    assert!(matches!(err, StoreError::CorruptState { .. }), "{err:?}");
    assert!(store.load_session(&good).await.unwrap().is_some());
    store.close().await;
    let err = store.load_session(&good).await.unwrap_err();
    assert!(matches!(err, StoreError::Closed), "{err:?}");
    schemas.cleanup().await;
}

#[tokio::test]
async fn open_picks_postgres_and_refuses_bad_schema_names() {
    let Some(url) = url() else { return };
    let err = PostgresStore::open(&url, PostgresOptions::default().with_schema("x; DROP TABLE y")).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let quick = PostgresOptions::default().with_acquire_timeout(std::time::Duration::from_millis(500));
    let err = PostgresStore::open("postgres://nobody@127.0.0.1:1/none", quick).await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
}
