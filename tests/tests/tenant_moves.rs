//! Rows that move between tenants (tenant-column rule), end to end on both
//! sources: an UPDATE of the tenant column leaves the old tenant's curated
//! table without the row and puts it in the new tenant's. PostgreSQL sends
//! the old row only when its replica identity covers the tenant column, so a
//! table whose identity does not is refused at start, naming the fix.

use std::collections::BTreeMap;
use std::time::Duration;

use lablake_tests::{Kind, World, curated_state};

const COLS: &[&str] = &["id", "tenant", "v"];

/// Rows of tenants alpha and beta in one shared table; some move from alpha
/// to beta (one of them twice, back and forth and forth again), one is
/// deleted after moving. Each tenant's curated table equals its rows at the
/// source.
async fn moved_rows_leave_the_old_tenant(w: &mut World, table: &str) -> anyhow::Result<()> {
    let (alpha, beta) = (w.tenants[0].clone(), w.tenants[1].clone());
    let db = w.shared_database();
    w.start()?;
    let mut inserts = Vec::new();
    for id in 1..=20 {
        let t = if id % 2 == 0 { &beta } else { &alpha };
        inserts.push(format!("INSERT INTO {table} (id, tenant, v) VALUES ({id}, '{t}', 'v{id}')"));
    }
    w.exec_in(&db, &inserts.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    w.exec_in(&db, &[&format!("UPDATE {table} SET tenant = '{beta}', v = 'moved' WHERE id IN (1, 3, 5)")]).await?;
    w.exec_in(&db, &[&format!("UPDATE {table} SET tenant = '{alpha}' WHERE id = 5")]).await?;
    w.exec_in(&db, &[&format!("UPDATE {table} SET tenant = '{beta}', v = 'again' WHERE id = 5")]).await?;
    w.exec_in(&db, &[&format!("DELETE FROM {table} WHERE id = 3")]).await?;
    let all = w.source_state_in(&db, table, COLS).await?;
    for t in [&alpha, &beta] {
        let expected: BTreeMap<_, _> =
            all.iter().filter(|(_, r)| r["tenant"] == **t).map(|(k, v)| (k.clone(), v.clone())).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            w.assert_running()?;
            let mut got = curated_state(w.curated_rows_in(t, &db, table).await?, "id");
            for r in got.values_mut() {
                r.retain(|c, _| COLS.contains(&c.as_str()));
            }
            if got == expected {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "tenant {t}: curated {table} differs from its source rows\nsource {expected:?}\nlake   {got:?}\nlog:\n{}",
                w.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let _ = w.stop();
    Ok(())
}

const MYSQL_DDL: &str =
    "CREATE TABLE orders (id BIGINT NOT NULL PRIMARY KEY, tenant VARCHAR(40) NOT NULL, v VARCHAR(40)) ENGINE=InnoDB";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_rows_moving_between_tenants_leave_the_old_tenant() -> anyhow::Result<()> {
    let mut w = World::with_shared_database(Kind::Mysql, 2, &[MYSQL_DDL], "tenant").await?;
    moved_rows_leave_the_old_tenant(&mut w, "orders").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_moving_between_tenants_leave_the_old_tenant_with_replica_identity_full() -> anyhow::Result<()> {
    let ddl = "CREATE TABLE orders (id bigint PRIMARY KEY, tenant text NOT NULL, v text); \
               ALTER TABLE orders REPLICA IDENTITY FULL";
    let mut w = World::with_shared_database(Kind::Postgres, 2, &[ddl], "tenant").await?;
    moved_rows_leave_the_old_tenant(&mut w, "orders").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_moving_between_tenants_leave_the_old_tenant_with_the_tenant_in_the_key() -> anyhow::Result<()> {
    // The default replica identity (the primary key) covers the tenant column.
    let ddl = "CREATE TABLE orders (id bigint NOT NULL, tenant text NOT NULL, v text, PRIMARY KEY (tenant, id))";
    let mut w = World::with_shared_database(Kind::Postgres, 2, &[ddl], "tenant").await?;
    moved_rows_leave_the_old_tenant(&mut w, "orders").await
}

/// With the default replica identity and the tenant column outside the key,
/// an UPDATE's old row is not sent: the source refuses to start and says how
/// to fix the table, instead of leaving moved rows behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_tenant_column_outside_the_replica_identity() -> anyhow::Result<()> {
    let ddl = "CREATE TABLE orders (id bigint PRIMARY KEY, tenant text NOT NULL, v text)";
    let mut w = World::with_shared_database(Kind::Postgres, 2, &[ddl], "tenant").await?;
    let db = w.shared_database();
    w.start()?;
    let status = w.wait_exit(Duration::from_secs(60)).await?;
    assert!(!status.success(), "lablake must not run with a table it cannot route");
    let log = std::fs::read_to_string(&w.log_path)?;
    assert!(
        log.contains(&format!("{db}.orders")) && log.contains("REPLICA IDENTITY FULL"),
        "the error names the table and the fix:\n{}",
        w.log_tail()
    );
    Ok(())
}
