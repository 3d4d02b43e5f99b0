//! The source conformance suite (`lablake_source::conformance`) against
//! MariaDB/MySQL (`LABLAKE_MYSQL_URL`, default
//! `mysql://lablake:lablake@127.0.0.1:23306`): the same checks the
//! PostgreSQL connector passes. Fails, never skips, when the server is
//! unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lablake_mysql::MysqlSourceConfig;
use lablake_source::conformance::{self, Fixture};
use mysql_async::prelude::Queryable;

fn url() -> String {
    std::env::var("LABLAKE_MYSQL_URL").unwrap_or_else(|_| "mysql://lablake:lablake@127.0.0.1:23306".into())
}

struct Mysql {
    pool: mysql_async::Pool,
    id: String,
    tenants: Vec<String>,
}

impl Mysql {
    async fn new() -> Mysql {
        let id = format!("{:010x}", rand::random::<u64>() & 0xff_ffff_ffff);
        let pool = mysql_async::Pool::new(url().as_str());
        let tenants: Vec<String> = (0..2).map(|i| format!("c{id}{i}")).collect();
        let mut c = pool.get_conn().await.expect("MariaDB unreachable: start dev/services or set LABLAKE_MYSQL_URL");
        for t in &tenants {
            c.query_drop(format!("CREATE DATABASE lab_{t}")).await.unwrap();
        }
        c.query_drop(format!("CREATE DATABASE shared_{id}")).await.unwrap();
        Mysql { pool, id, tenants }
    }

    async fn run(&self, database: &str, statements: &[&str]) {
        let mut c = self.pool.get_conn().await.unwrap();
        c.query_drop(format!("USE {database}")).await.unwrap();
        c.query_drop("START TRANSACTION").await.unwrap();
        for s in statements {
            c.query_drop(*s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        c.query_drop("COMMIT").await.unwrap();
    }

    /// A source from the current binlog position with the given tenant rule and tables.
    async fn source(&self, include: &str, tenant: serde_json::Value) -> MysqlSourceConfig {
        let mut c = self.pool.get_conn().await.unwrap();
        let row: mysql_async::Row = c.query_first("SHOW MASTER STATUS").await.unwrap().expect("binary logging is on");
        let (file, pos): (String, u64) = (row.get(0).unwrap(), row.get(1).unwrap());
        serde_json::from_value(serde_json::json!({
            "name": "conformance", "url": url(), "server_id": 200_000 + rand::random::<u32>() % 1_000_000_000,
            "tenant": tenant, "include": [include], "start": { "file": file, "pos": pos },
            "heartbeat_interval": "300ms", "idle_timeout": "10s",
        }))
        .unwrap()
    }

    async fn drop_all(&self) {
        let mut c = self.pool.get_conn().await.unwrap();
        for t in &self.tenants {
            let _ = c.query_drop(format!("DROP DATABASE lab_{t}")).await;
        }
        let _ = c.query_drop(format!("DROP DATABASE shared_{}", self.id)).await;
    }
}

impl Fixture for Mysql {
    type Connector = MysqlSourceConfig;

    fn tenants(&self) -> &[String] {
        &self.tenants
    }

    fn database(&self, tenant: &str) -> String {
        format!("lab_{tenant}")
    }

    async fn execute(&self, tenant: &str, statements: &[&str]) {
        self.run(&self.database(tenant), statements).await
    }

    async fn connector(&self) -> MysqlSourceConfig {
        let tenant = serde_json::json!({ "kind": "schema", "pattern": "lab_{tenant}" });
        self.source(&format!("lab_c{}*.*", self.id), tenant).await
    }

    fn typed_table(&self) -> (&'static str, &'static str) {
        (
            "CREATE TABLE typed (id INT NOT NULL PRIMARY KEY, u INT UNSIGNED, big BIGINT UNSIGNED, tiny TINYINT, \
             f FLOAT, d DOUBLE, amount DECIMAL(20,6), y YEAR, dt DATE, t TIME(3), dtm DATETIME(6), \
             ts TIMESTAMP(6) NULL DEFAULT NULL, e ENUM('low','high'), s SET('a','b','c'), b BIT(12), bin BINARY(4), \
             vb VARBINARY(10), latin VARCHAR(20) CHARACTER SET latin1, txt MEDIUMTEXT, doc JSON) ENGINE=InnoDB",
            "4294967295, 18446744073709551615, -128, 1.5, -2.25e-300, -12345678901234.000001, 2024, '2024-02-29', \
             '-838:59:59.999', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.123456', 'high', 'a,c', \
             b'101010101010', x'0102', x'00ff', 'caf\u{e9}', REPEAT('x', 70000), \
             '{\"b\": [1, 2.50, null], \"a\": \"\u{e9}\"}'",
        )
    }

    async fn shared_connector(&self) -> MysqlSourceConfig {
        let ddl = "CREATE TABLE shared_orders (id BIGINT NOT NULL PRIMARY KEY, tenant VARCHAR(40) NOT NULL, \
                   v VARCHAR(40)) ENGINE=InnoDB";
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
async fn the_mysql_source_passes_the_conformance_suite() {
    let f = Mysql::new().await;
    conformance::run_all(&f).await;
    f.drop_all().await;
}
