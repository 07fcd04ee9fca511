//! Both backends run the same conformance suite.

use tokenledger_store::conformance::Harness;
use tokenledger_store::{EventStore, MemoryStore, RedbOptions, RedbStore};

struct Memory;

#[async_trait::async_trait]
impl Harness for Memory {
    type Store = MemoryStore;
    async fn open(&self) -> MemoryStore {
        MemoryStore::new()
    }
    async fn restart(&self, store: MemoryStore) -> MemoryStore {
        store.close().await;
        store.restarted()
    }
}

struct Redb {
    dir: tempfile::TempDir,
}

impl Redb {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[async_trait::async_trait]
impl Harness for Redb {
    type Store = RedbStore;
    async fn open(&self) -> RedbStore {
        RedbStore::open(RedbOptions::new(self.dir.path().join("ledger.redb"))).unwrap()
    }
    async fn restart(&self, store: RedbStore) -> RedbStore {
        store.close().await;
        drop(store);
        self.open().await
    }
}

mod memory {
    tokenledger_store::conformance_suite!(super::Memory);
}

mod redb {
    tokenledger_store::conformance_suite!(super::Redb::new());
}
