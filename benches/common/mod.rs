//! Shared by the benchmarks: a scratch database with enrolled devices.

use sqlx::{Connection, Executor, PgConnection};

use waypoint::clock::{Clock, SystemClock};
use waypoint::domain::DeviceId;
use waypoint::store::postgres::PgStore;
use waypoint::store::Store;

/// A database created for one benchmark run and dropped at its end.
pub struct ScratchDb {
    admin: PgConnection,
    name: String,
    /// Connection URL of the scratch database.
    pub url: String,
}

impl ScratchDb {
    /// Creates `wp_{tag}_{pid}` next to WAYPOINT_BENCH_DATABASE_URL (default
    /// the local `postgres` database), migrates it and enrolls
    /// `{id_prefix}0 .. {id_prefix}{devices-1}`.
    pub async fn create(tag: &str, devices: usize, id_prefix: &str) -> Self {
        let admin_url = std::env::var("WAYPOINT_BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("wp_{tag}_{}", std::process::id());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("PostgreSQL must be reachable for the benchmark");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create the scratch database");
        let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
        let store = PgStore::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        for d in 0..devices {
            store
                .add_device(
                    &DeviceId::parse(&format!("{id_prefix}{d}")).unwrap(),
                    None,
                    SystemClock.now(),
                )
                .await
                .unwrap();
        }
        store.pool().close().await;
        Self { admin, name, url }
    }

    /// Drops the database (closing any connection still open to it).
    pub async fn drop_database(mut self) {
        let _ = self
            .admin
            .execute(format!("DROP DATABASE {} WITH (FORCE)", self.name).as_str())
            .await;
    }
}
