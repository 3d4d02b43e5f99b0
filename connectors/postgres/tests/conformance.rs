//! The source conformance suite (`lablake_source::conformance`) against
//! PostgreSQL (`LABLAKE_PG_URL`, default
//! `postgres://postgres@127.0.0.1:25432/postgres`, `wal_level=logical`): the
//! same checks the MySQL connector passes. Fails, never skips, when the
//! server is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Duration;

use lablake_postgres::PgSourceConfig;
use lablake_source::conformance::{self, Fixture};
use tokio_postgres::{Client, NoTls};

fn url() -> String {
    std::env::var("LABLAKE_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:25432/postgres".into())
}

struct Postgres {
    admin: Client,
    id: String,
    tenants: Vec<String>,
    /// Slots made for the checks; the previous one is dropped when the next
    /// check asks for a connector (checks run one at a time).
    slots: Mutex<Vec<String>>,
}

impl Postgres {
    async fn new() -> Postgres {
        let (admin, conn) = tokio_postgres::connect(&url(), NoTls)
            .await
            .expect("PostgreSQL unreachable: start dev/services or set LABLAKE_PG_URL");
        tokio::spawn(conn);
        let id = format!("{:010x}", rand::random::<u64>() & 0xff_ffff_ffff);
        let tenants: Vec<String> = (0..2).map(|i| format!("c{id}{i}")).collect();
        for t in &tenants {
            admin.batch_execute(&format!("CREATE SCHEMA lab_{t}")).await.unwrap();
        }
        admin
            .batch_execute(&format!("CREATE SCHEMA shared_{id}; CREATE PUBLICATION conf_{id} FOR ALL TABLES"))
            .await
            .unwrap();
        Postgres { admin, id, tenants, slots: Mutex::new(Vec::new()) }
    }

    async fn run(&self, schema: &str, statements: &[&str]) {
        let sql = format!("BEGIN; SET LOCAL search_path = {schema}; {}; COMMIT", statements.join("; "));
        self.admin.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn drop_slot(&self, slot: &str) {
        for _ in 0..100 {
            match self.admin.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await {
                Ok(_) => return,
                Err(e) if e.to_string().contains("does not exist") => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// A source on a new slot (created now, so what follows is captured).
    async fn source(&self, include: &str, tenant: serde_json::Value) -> PgSourceConfig {
        let old: Vec<String> = std::mem::take(&mut *self.slots.lock().unwrap());
        for s in old {
            self.drop_slot(&s).await;
        }
        let slot = format!("conf_{}_{}", self.id, rand::random::<u32>());
        self.admin
            .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
            .await
            .unwrap();
        self.slots.lock().unwrap().push(slot.clone());
        serde_json::from_value(serde_json::json!({
            "name": "conformance", "url": url(), "slot": slot, "publication": format!("conf_{}", self.id),
            "tenant": tenant, "include": [include], "heartbeat_interval": "300ms", "status_interval": "100ms",
        }))
        .unwrap()
    }

    async fn drop_all(&self) {
        let slots: Vec<String> = std::mem::take(&mut *self.slots.lock().unwrap());
        for s in slots {
            self.drop_slot(&s).await;
        }
        let _ = self.admin.batch_execute(&format!("DROP PUBLICATION IF EXISTS conf_{}", self.id)).await;
        for t in &self.tenants {
            let _ = self.admin.batch_execute(&format!("DROP SCHEMA lab_{t} CASCADE")).await;
        }
        let _ = self.admin.batch_execute(&format!("DROP SCHEMA shared_{} CASCADE", self.id)).await;
    }
}

impl Fixture for Postgres {
    type Connector = PgSourceConfig;

    fn tenants(&self) -> &[String] {
        &self.tenants
    }

    fn database(&self, tenant: &str) -> String {
        format!("lab_{tenant}")
    }

    async fn execute(&self, tenant: &str, statements: &[&str]) {
        self.run(&self.database(tenant), statements).await
    }

    async fn connector(&self) -> PgSourceConfig {
        let tenant = serde_json::json!({ "kind": "schema", "pattern": "lab_{tenant}" });
        self.source(&format!("lab_c{}*.*", self.id), tenant).await
    }

    fn typed_table(&self) -> (&'static str, &'static str) {
        (
            "CREATE TYPE flag AS ENUM ('N', 'H', 'L'); CREATE DOMAIN code AS varchar(16); \
             CREATE TABLE typed (id bigint PRIMARY KEY, small smallint, i int, ok boolean, f4 real, \
             f8 double precision, dec numeric(18,6), num numeric, txt text, vc varchar(20), bp char(4), bin bytea, \
             d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb, \
             arr int[], tarr text[], fl flag, code code)",
            "-32768, 2147483647, true, 1.5, -2.25e-300, 123456789012.123456, 3.14159265358979323846, 'caf\u{e9}', \
             'vc', 'ab', '\\x00ff'::bytea, '2024-02-29', '23:59:59.999999', '12:00:00+05:30', \
             '2038-01-19 03:14:07.123456', '2024-01-01 00:00:00+00', '1 year 2 mons 3 days 04:05:06', \
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"b\": [1, 2.50, null]}', '{\"a\": 1}', '{1,2,NULL}', \
             '{\"x\",\"y\"}', 'H', 'C-1'",
        )
    }

    async fn shared_connector(&self) -> PgSourceConfig {
        let ddl = "CREATE TABLE shared_orders (id BIGINT NOT NULL PRIMARY KEY, tenant VARCHAR(40) NOT NULL, \
                   v VARCHAR(40)); ALTER TABLE shared_orders REPLICA IDENTITY FULL";
        self.run(&self.shared_database(), &[ddl]).await;
        let tenant = serde_json::json!({ "kind": "column", "column": "tenant" });
        self.source(&format!("{}.shared_orders", self.shared_database()), tenant).await
    }

    async fn execute_shared(&self, statements: &[&str]) {
        self.run(&self.shared_database(), statements).await
    }

    fn shared_database(&self) -> String {
        format!("shared_{}", self.id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_source_passes_the_conformance_suite() {
    let f = Postgres::new().await;
    conformance::run_all(&f).await;
    f.drop_all().await;
}
