//! The conformance suite on the in-memory backend.

use std::sync::Arc;

use flowcore_store::{testkit, MemoryStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_passes_the_conformance_suite() {
    let passed = testkit::run_suite(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
    assert_eq!(passed, testkit::CASES.len());
}

#[tokio::test]
async fn open_picks_memory() {
    let store = flowcore_store::open("memory://").await.unwrap();
    assert_eq!(store.backend(), "memory");
    let err = flowcore_store::open("redis://localhost").await.err().unwrap();
    assert!(matches!(err, flowcore_store::StoreError::UnsupportedUrl(_)), "{err:?}");
}
