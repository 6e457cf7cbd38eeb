//! The two storage backends side by side, for tests that run one case on
//! each (`tests/storage.rs`, `tests/retention.rs`).

use std::future::Future;

use waypoint::store::postgres::PgStore;
use waypoint::store::sqlite::SqliteStore;
use waypoint::store::Store;

use super::TestDb;

/// A store under test plus a way to look at its tables directly. Queries
/// are written in the SQL both dialects share (`$1` parameters work in
/// both; `CAST(x AS bigint)` makes PostgreSQL return int8).
pub trait Backend {
    type S: Store;
    fn store(&self) -> Self::S;
    fn scalar(&self, sql: &str) -> impl Future<Output = i64>;
}

pub struct Pg(pub TestDb);

impl Backend for Pg {
    type S = PgStore;
    fn store(&self) -> PgStore {
        self.0.store()
    }
    async fn scalar(&self, sql: &str) -> i64 {
        self.0.count(sql).await
    }
}

pub struct Lite {
    /// Removed (with the database) when the test ends.
    _dir: tempfile::TempDir,
    pub store: SqliteStore,
}

impl Backend for Lite {
    type S = SqliteStore;
    fn store(&self) -> SqliteStore {
        self.store.clone()
    }
    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(self.store.read_pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

pub async fn pg() -> Pg {
    Pg(TestDb::new().await)
}

pub async fn lite() -> Lite {
    let dir = tempfile::tempdir().expect("temporary directory");
    // A directory that does not exist yet: open creates it.
    let store = SqliteStore::open(&dir.path().join("data"))
        .await
        .expect("open SQLite store");
    store.migrate().await.expect("SQLite migrations apply");
    Lite { _dir: dir, store }
}
