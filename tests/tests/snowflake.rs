//! MariaDB → Kafka → curated lake → Snowflake (the local emulator), real
//! processes: each tenant's Snowflake tables equal its source tables, and a
//! column added at the source shows up with its values.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lablake_snowflake::{Client, SnowflakeConfig};
use lablake_tests::snowflake::{sink_config_at, table_rows};
use lablake_tests::{ORDERS_DDL, World, source_rows};
use mysql_async::prelude::Queryable;

/// PostgreSQL `orders`, like the MariaDB one.
const PG_DDL: &str = "CREATE TABLE orders (id int PRIMARY KEY, patient text NOT NULL, status text, \
                      amount numeric(12,2), updated timestamptz NOT NULL DEFAULT now(), note text)";

fn snowflake_url() -> String {
    lablake_tests::snowflake::url()
}

fn sink_config(prefix: &str) -> String {
    sink_config_at(prefix, &snowflake_url())
}

async fn client() -> anyhow::Result<Client> {
    lablake_tests::snowflake::client()
}

/// Rows of a tenant's Snowflake `orders`, keyed by `ID`, as column → text
/// (`NULL` for nulls, names lower case), only `columns`, rows matching `filter`.
async fn snowflake_rows(
    c: &mut Client,
    database: &str,
    tenant: &str,
    columns: &[&str],
    filter: &str,
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    table_rows(c, database, &format!("lab_{tenant}"), "orders", columns, filter).await
}

/// Waits until the sink logged two failed, retried load passes; returns their lines.
async fn failed_passes(w: &mut World) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        w.assert_running()?;
        let log = std::fs::read_to_string(&w.log_path)?;
        let failed: Vec<String> =
            log.lines().filter(|l| l.contains("snowflake load failed; retrying")).map(str::to_owned).collect();
        if failed.len() >= 2 {
            return Ok(failed);
        }
        anyhow::ensure!(Instant::now() < deadline, "no retried failure logged:\n{}", w.log_tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Where the source rows come from.
enum Source<'a> {
    Mysql,
    Postgres(&'a tokio_postgres::Client),
}

/// Waits until the Snowflake table equals the source table on `columns`
/// (name, source expression rendering Snowflake's text form).
async fn await_equal(
    w: &mut World,
    c: &mut Client,
    database: &str,
    tenant: &str,
    columns: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<()> {
    await_equal_from(w, Source::Mysql, c, database, tenant, columns, "TRUE", timeout).await
}

#[allow(clippy::too_many_arguments)]
async fn await_equal_from(
    w: &mut World,
    source: Source<'_>,
    c: &mut Client,
    database: &str,
    tenant: &str,
    columns: &[(&str, &str)],
    filter: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let deadline = Instant::now() + timeout;
    loop {
        w.assert_running()?;
        let expected = match &source {
            Source::Mysql => source_rows(&w.pool, tenant, "orders", columns).await?,
            Source::Postgres(pg) => lablake_tests::pg_source_rows(pg, tenant, "orders", columns).await?,
        };
        let got = snowflake_rows(c, database, tenant, &names, filter).await?;
        if got == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            let diff = lablake_tests::state_diff(&expected, &got, "snowflake");
            anyhow::bail!(
                "Snowflake {database} for {tenant}: {} rows, source {}:\n{}\n{}",
                got.len(),
                expected.len(),
                diff,
                w.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// MariaDB columns compared in full: `updated` (DATETIME(6)) as epoch
/// seconds, the form Snowflake timestamps read back as.
const MY_COLUMNS: &[(&str, &str)] = &[
    ("id", "id"),
    ("patient", "patient"),
    ("status", "status"),
    ("amount", "amount"),
    ("updated", "UNIX_TIMESTAMP(updated)"),
    ("note", "note"),
];

/// A mixed workload on three tenants lands in each tenant's Snowflake
/// database exactly (inserts, updates, deletes), a column added at the
/// source appears in Snowflake with its values, and a truncate empties the
/// table of everything before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tenants_land_in_snowflake_exactly() -> anyhow::Result<()> {
    let prefix = format!("LLT{}_", lablake_tests::rand_id(6).to_uppercase());
    let mut w = World::new(3, &[ORDERS_DDL], &sink_config(&prefix)).await?;
    w.start()?;
    let mut conn = w.pool.get_conn().await?;
    for (n, t) in w.tenants.clone().iter().enumerate() {
        conn.query_drop(format!("USE lab_{t}")).await?;
        for i in 0..300 {
            conn.query_drop(format!(
                "INSERT INTO orders VALUES ({i}, 'p{n}-{i}', 'new', {}.{:02}, NOW(6), {})",
                i % 97,
                i % 100,
                if i % 3 == 0 { "NULL".to_owned() } else { format!("'note {i}'") }
            ))
            .await?;
        }
        conn.query_drop("UPDATE orders SET status = 'collected', amount = amount + 1 WHERE id % 4 = 0").await?;
        conn.query_drop("DELETE FROM orders WHERE id % 10 = 7").await?;
        conn.query_drop("UPDATE orders SET note = 'changed' WHERE id BETWEEN 100 AND 120").await?;
    }
    let mut c = client().await?;
    for t in w.tenants.clone() {
        let db = format!("{prefix}{}", t.to_uppercase());
        await_equal(&mut w, &mut c, &db, &t, MY_COLUMNS, Duration::from_secs(120)).await?;
    }
    // A new source column: added in Snowflake before the rows that carry it.
    let t = w.tenants[0].clone();
    conn.query_drop(format!("USE lab_{t}")).await?;
    conn.query_drop("ALTER TABLE orders ADD COLUMN lab VARCHAR(20)").await?;
    conn.query_drop("INSERT INTO orders VALUES (1000, 'late', 'new', 1.00, NOW(6), NULL, 'north')").await?;
    conn.query_drop("UPDATE orders SET lab = 'south' WHERE id = 5").await?;
    let db = format!("{prefix}{}", t.to_uppercase());
    let with_lab = [("id", "id"), ("patient", "patient"), ("note", "note"), ("lab", "lab")];
    await_equal(&mut w, &mut c, &db, &t, &with_lab, Duration::from_secs(60)).await?;
    // A truncate: every older row goes, rows written after it stay.
    let t = w.tenants[1].clone();
    conn.query_drop(format!("USE lab_{t}")).await?;
    conn.query_drop("INSERT INTO orders VALUES (2000, 'before', 'new', 1.00, NOW(6), NULL)").await?;
    conn.query_drop("TRUNCATE TABLE orders").await?;
    conn.query_drop("INSERT INTO orders VALUES (7, 'after', 'new', 2.00, NOW(6), 'again')").await?;
    conn.query_drop("INSERT INTO orders VALUES (3000, 'after', 'resulted', 3.00, NOW(6), NULL)").await?;
    let db = format!("{prefix}{}", t.to_uppercase());
    await_equal(&mut w, &mut c, &db, &t, MY_COLUMNS, Duration::from_secs(60)).await?;
    let _ = w.stop();
    Ok(())
}

/// Snowflake column types of a tenant's `ORDERS` table: name → declared type.
async fn snowflake_types(c: &mut Client, database: &str, tenant: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let r = c
        .query(
            &format!(
                "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE FROM \"{database}\".INFORMATION_SCHEMA.COLUMNS \
                 WHERE TABLE_SCHEMA = 'LAB_{}' AND TABLE_NAME = 'ORDERS'",
                tenant.to_uppercase()
            ),
            &[],
        )
        .await?;
    Ok(r.rows
        .into_iter()
        .map(|row| {
            let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let ty = match cell(1).as_str() {
                "NUMBER" => format!("NUMBER({},{})", cell(2), cell(3)),
                other => other.to_owned(),
            };
            (cell(0), ty)
        })
        .collect())
}

/// Type changes and a rename at the source reach Snowflake: a key widened
/// to BIGINT is widened in place, a decimal with a finer scale is rebuilt
/// (existing values kept; the sink killed twice in the middle of it), a
/// renamed column keeps its values under the new name (no second column),
/// and rows that need the new shapes load exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_changes_and_renames_at_the_source_reach_snowflake() -> anyhow::Result<()> {
    let prefix = format!("LLT{}_", lablake_tests::rand_id(6).to_uppercase());
    let mut w = World::new(1, &[ORDERS_DDL], &sink_config(&prefix)).await?;
    // The first run dies in the middle of the column rebuild (new column
    // added), the second after the old column is dropped: the third finishes it.
    w.start_with_env(&[("LABLAKE_FAILPOINTS", "sink.rebuild_after_add")])?;
    let t = w.tenants[0].clone();
    let db = format!("{prefix}{}", t.to_uppercase());
    let mut conn = w.pool.get_conn().await?;
    conn.query_drop(format!("USE lab_{t}")).await?;
    for i in 0..200 {
        conn.query_drop(format!("INSERT INTO orders VALUES ({i}, 'p{i}', 'new', {i}.25, NOW(6), 'note {i}')")).await?;
    }
    let mut c = client().await?;
    await_equal(&mut w, &mut c, &db, &t, MY_COLUMNS, Duration::from_secs(90)).await?;
    let before = snowflake_types(&mut c, &db, &t).await?;
    assert_eq!(before.get("ID").map(String::as_str), Some("NUMBER(10,0)"), "{before:?}");
    assert_eq!(before.get("AMOUNT").map(String::as_str), Some("NUMBER(12,2)"), "{before:?}");

    conn.query_drop("ALTER TABLE orders MODIFY id BIGINT NOT NULL, MODIFY amount DECIMAL(18,4)").await?;
    conn.query_drop("INSERT INTO orders VALUES (5000000000, 'big', 'new', 12345678901234.5678, NOW(6), 'wide')")
        .await?;
    conn.query_drop("UPDATE orders SET amount = amount + 0.0001 WHERE id % 10 = 3").await?;
    for point in ["sink.rebuild_after_add", "sink.rebuild_after_drop"] {
        if point != "sink.rebuild_after_add" {
            w.start_with_env(&[("LABLAKE_FAILPOINTS", point)])?;
        }
        let status = w.wait_exit(Duration::from_secs(90)).await?;
        assert!(!status.success(), "{point}: the failpoint aborts the process");
    }
    w.start()?;
    conn.query_drop("ALTER TABLE orders RENAME COLUMN note TO remark").await?;
    conn.query_drop("UPDATE orders SET remark = 'renamed' WHERE id % 10 = 5").await?;
    conn.query_drop("INSERT INTO orders VALUES (5000000001, 'after', 'new', 0.0001, NOW(6), 'r')").await?;
    conn.query_drop("DELETE FROM orders WHERE id % 10 = 9").await?;

    let columns = [
        ("id", "id"),
        ("patient", "patient"),
        ("amount", "amount"),
        ("updated", "UNIX_TIMESTAMP(updated)"),
        ("remark", "remark"),
    ];
    await_equal(&mut w, &mut c, &db, &t, &columns, Duration::from_secs(90)).await?;
    let after = snowflake_types(&mut c, &db, &t).await?;
    assert_eq!(after.get("ID").map(String::as_str), Some("NUMBER(19,0)"), "{after:?}");
    assert_eq!(after.get("AMOUNT").map(String::as_str), Some("NUMBER(18,4)"), "{after:?}");
    assert_eq!(after.get("REMARK").map(String::as_str), Some("TEXT"), "{after:?}");
    assert!(!after.contains_key("NOTE"), "the renamed column is not kept twice: {after:?}");
    assert!(!after.keys().any(|k| k.contains("__LABLAKE")), "no rebuild leftovers: {after:?}");
    let log = std::fs::read_to_string(&w.log_path)?;
    assert_eq!(log.lines().filter(|l| l.contains("failpoint reached")).count(), 2, "both failpoints fired");
    for what in ["widening column", "rebuilding column", "renaming column"] {
        assert!(log.contains(what), "no `{what}` logged:\n{}", w.log_tail());
    }
    // Each batch's staging table is dropped once the batch is in the ledger.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .query(
                &format!(
                    "SELECT TABLE_NAME FROM \"{db}\".INFORMATION_SCHEMA.TABLES WHERE CONTAINS(TABLE_NAME, '__STAGE_')"
                ),
                &[],
            )
            .await?;
        if r.rows.is_empty() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "staging tables left behind: {:?}", r.rows);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = w.stop();
    Ok(())
}

/// A table the sink cannot load (a PostgreSQL table with columns `msg` and
/// `MSG`: one column in Snowflake) is retried on its own backoff and named
/// in the log, while
/// the tenant's other tables keep arriving: one stuck table does not hold
/// back the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_cannot_load_does_not_hold_back_the_others() -> anyhow::Result<()> {
    let prefix = format!("LLT{}_", lablake_tests::rand_id(6).to_uppercase());
    let mut w = World::new_postgres(
        1,
        &[PG_DDL, "CREATE TABLE audit_log (id int PRIMARY KEY, msg text, \"MSG\" text)"],
        &sink_config(&prefix),
    )
    .await?;
    w.start()?;
    let t = w.tenants[0].clone();
    let db = format!("{prefix}{}", t.to_uppercase());
    let pg = lablake_tests::pg_client().await?;
    pg.batch_execute(&format!("INSERT INTO lab_{t}.audit_log VALUES (1, 'first', 'FIRST')")).await?;
    let mut c = client().await?;
    let cols = [("id", "id"), ("patient", "patient"), ("amount", "amount")];
    // The audit table fails on every pass; orders keep coming.
    for round in 0..3 {
        pg.batch_execute(&format!(
            "INSERT INTO lab_{t}.orders (id, patient, amount) SELECT g, 'p' || g, g + 0.5 FROM generate_series({}, {}) g",
            round * 100,
            round * 100 + 19
        ))
        .await?;
        await_equal_from(&mut w, Source::Postgres(&pg), &mut c, &db, &t, &cols, "TRUE", Duration::from_secs(60))
            .await?;
    }
    let failed = failed_passes(&mut w).await?;
    assert!(failed.iter().all(|l| l.contains("audit_log") && l.contains("the same column in Snowflake")), "{failed:?}");
    let _ = w.stop();
    Ok(())
}

/// The sink is killed between COPY and MERGE, and after MERGE before its
/// checkpoint, several times while three tenants change: every restart
/// repeats the interrupted batch (COPY skipped by load history, MERGE
/// guarded, ledger), and Snowflake still equals the source exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_sink_between_copy_merge_and_checkpoint_keeps_snowflake_exact() -> anyhow::Result<()> {
    let prefix = format!("LLT{}_", lablake_tests::rand_id(6).to_uppercase());
    let mut w = World::new(3, &[ORDERS_DDL], &sink_config(&prefix)).await?;
    let tenants = w.tenants.clone();
    let pool = w.pool.clone();
    // Changes keep arriving across the kills, so there are always new batches
    // (a load takes every batch of a table's backlog: a failpoint at the third
    // load needs batches that arrive after the first pass).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let writer = tokio::spawn(async move {
        let mut c = pool.get_conn().await?;
        for round in 0..1000u32 {
            if round >= 40 && stopped.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            for (n, t) in tenants.iter().enumerate() {
                let base = round * 20;
                let values: Vec<String> = (base..base + 20)
                    .map(|i| format!("({i}, 'p{n}-{i}', 'new', {}.{:02}, NOW(6), NULL)", i % 97, i % 100))
                    .collect();
                c.query_drop(format!("INSERT INTO lab_{t}.orders VALUES {}", values.join(", "))).await?;
                c.query_drop(format!(
                    "UPDATE lab_{t}.orders SET status = 'resulted', note = 'r{round}' WHERE id % 7 = {} AND id < {base}",
                    round % 7
                ))
                .await?;
                c.query_drop(format!("DELETE FROM lab_{t}.orders WHERE id = {}", base / 2 + 1)).await?;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        anyhow::Ok(())
    });
    let points = ["sink.after_copy@2", "sink.after_merge@2", "sink.after_copy@3", "sink.after_merge@1"];
    for point in points {
        w.start_with_env(&[("LABLAKE_FAILPOINTS", point)])?;
        let status = w.wait_exit(Duration::from_secs(90)).await?;
        assert!(!status.success(), "{point}: the failpoint aborts the process");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await??;
    w.start()?;
    let mut c = client().await?;
    for t in w.tenants.clone() {
        let db = format!("{prefix}{}", t.to_uppercase());
        await_equal(&mut w, &mut c, &db, &t, MY_COLUMNS, Duration::from_secs(120)).await?;
    }
    let log = std::fs::read_to_string(&w.log_path)?;
    let hits = log.lines().filter(|l| l.contains("failpoint reached")).count();
    assert_eq!(hits, points.len(), "every failpoint fired once");
    let _ = w.stop();
    Ok(())
}

/// An unreachable Snowflake endpoint: the sink says which tenant and which
/// endpoint failed, keeps retrying with backoff while the rest of the
/// pipeline runs, and once the endpoint is right everything arrives — the
/// backlog of curated files in a few loads (one COPY + MERGE over many
/// files), not one per file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_snowflake_is_retried_and_nothing_is_lost() -> anyhow::Result<()> {
    let prefix = format!("LLT{}_", lablake_tests::rand_id(6).to_uppercase());
    let metrics = format!("127.0.0.1:{}", lablake_tests::broker::PrivateBroker::free_port()?);
    let extra = format!("[metrics]\nlisten = \"{metrics}\"\n{}", sink_config_at(&prefix, "http://127.0.0.1:9"));
    let mut w = World::new(1, &[ORDERS_DDL], &extra).await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let mut conn = w.pool.get_conn().await?;
    // Twelve rounds, each curated on its own (the batch's idle flush is 500 ms).
    for round in 0..12 {
        for i in round * 5..round * 5 + 5 {
            conn.query_drop(format!("INSERT INTO lab_{t}.orders VALUES ({i}, 'p{i}', 'new', 1.{i:02}, NOW(6), NULL)"))
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    for l in failed_passes(&mut w).await? {
        assert!(l.contains(&format!("{t}/lab_{t}.orders")) && l.contains("http://127.0.0.1:9"), "{l}");
    }
    let lake = w.lake()?;
    let files = lake.list(&t, &format!("{t}/curated/")).await?.iter().filter(|k| k.ends_with(".parquet")).count();
    anyhow::ensure!(files >= 10, "the rounds were curated into {files} files (≥ 10 expected)");
    // The endpoint fixed (an environment override): nothing was lost.
    w.stop()?;
    w.start_with_env(&[("LABLAKE__SNOWFLAKE__CONNECTION__BASE_URL", &snowflake_url())])?;
    let mut c = client().await?;
    let db = format!("{prefix}{}", t.to_uppercase());
    let cols = [("id", "id"), ("patient", "patient"), ("amount", "amount")];
    await_equal(&mut w, &mut c, &db, &t, &cols, Duration::from_secs(60)).await?;
    // The counters move after the checkpoint, a moment after the rows are visible.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (batches, loads) = loop {
        let m = lablake_tests::scrape_metrics(&metrics).await?;
        let sum = |name| -> f64 { lablake_tests::metric_by_label(&m, name, "table").values().sum() };
        let (batches, loads) = (sum("lablake_sink_batches_total"), sum("lablake_sink_loads_total"));
        if batches >= files as f64 || Instant::now() > deadline {
            break (batches, loads);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    anyhow::ensure!(
        batches >= files as f64 && loads <= 2.0,
        "the backlog of {files} files loads in one or two loads: {loads} loads of {batches} batches"
    );
    let _ = w.stop();
    Ok(())
}

/// PostgreSQL → Snowflake with soft deletes: a mixed workload on three
/// tenants, deletes kept as flagged rows, and unchanged TOAST values (a large
/// text not sent with updates of other columns) kept in Snowflake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tenants_land_in_snowflake_with_soft_deletes_and_toast() -> anyhow::Result<()> {
    let prefix = format!("LLT{}_", lablake_tests::rand_id(6).to_uppercase());
    // Soft deletes (a `[snowflake]` key, so before `[snowflake.connection]`).
    let extra = sink_config(&prefix).replacen(
        "[snowflake.connection]",
        "soft_delete_column = \"_DELETED\"\n[snowflake.connection]",
        1,
    );
    let mut w = World::new_postgres(3, &[PG_DDL], &extra).await?;
    w.start()?;
    let pg = lablake_tests::pg_client().await?;
    for (n, t) in w.tenants.clone().iter().enumerate() {
        pg.batch_execute(&format!(
            "SET search_path = lab_{t};
             INSERT INTO orders (id, patient, status, amount, note)
               SELECT g, 'p{n}-' || g, 'new', (g % 97) + 0.25, CASE WHEN g % 5 = 0 THEN repeat('toast ', 3000) END
               FROM generate_series(1, 200) g;
             UPDATE orders SET status = 'collected', amount = amount + 1 WHERE id % 4 = 0;
             DELETE FROM orders WHERE id % 10 = 7;
             UPDATE orders SET status = 'resulted' WHERE id % 5 = 0;
             RESET search_path"
        ))
        .await?;
    }
    let mut c = client().await?;
    let cols = [
        ("id", "id"),
        ("patient", "patient"),
        ("status", "status"),
        ("amount", "amount"),
        ("updated", "to_char(extract(epoch from updated), 'FM9999999999.000000')"),
        ("note", "note"),
    ];
    for t in w.tenants.clone() {
        let db = format!("{prefix}{}", t.to_uppercase());
        let live = "COALESCE(\"_DELETED\", FALSE) = FALSE";
        await_equal_from(&mut w, Source::Postgres(&pg), &mut c, &db, &t, &cols, live, Duration::from_secs(120)).await?;
        // Deleted rows are kept, flagged.
        let sql = format!(
            "SELECT COUNT(*) AS N FROM \"{db}\".\"LAB_{}\".\"ORDERS\" WHERE \"_DELETED\" = TRUE",
            t.to_uppercase()
        );
        let flagged = c.query(&sql, &[]).await?;
        assert_eq!(flagged.get(0, "n"), Some("20"), "soft-deleted rows of {t}");
    }
    let _ = w.stop();
    Ok(())
}

/// A fake Snowflake that refuses every login the way Snowflake does
/// (`success: false`, code 390100); returns its base URL.
async fn refusing_snowflake() -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = sock.read(&mut buf).await;
                let body = r#"{"data":null,"code":"390100","message":"Incorrect username or password was specified.","success":false}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(url)
}

/// Wrong credentials: the client reports a refused login naming the
/// endpoint (not retried at the HTTP level: the same credentials fail
/// again), the sink names the tenant too and keeps retrying with backoff,
/// and once the credentials are right everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_named_retried_and_nothing_is_lost() -> anyhow::Result<()> {
    let refusing = refusing_snowflake().await?;
    let mut cfg = SnowflakeConfig::new("lablaketest", "lablake");
    cfg.base_url = Some(refusing.clone());
    cfg.allow_http = true;
    cfg.password = Some("wrong".to_owned().into());
    match Client::new(cfg)?.login(None, None).await {
        Err(lablake_snowflake::SnowflakeError::Auth { endpoint, reason }) => {
            assert_eq!(endpoint, refusing);
            assert!(reason.contains("Incorrect username or password"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let prefix = format!("LLT{}_", lablake_tests::rand_id(6).to_uppercase());
    let mut w = World::new(1, &[ORDERS_DDL], &sink_config_at(&prefix, &refusing)).await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let mut conn = w.pool.get_conn().await?;
    for i in 0..30 {
        conn.query_drop(format!("INSERT INTO lab_{t}.orders VALUES ({i}, 'p{i}', 'new', 2.{i:02}, NOW(6), NULL)"))
            .await?;
    }
    for l in failed_passes(&mut w).await? {
        assert!(
            l.contains(&format!("{t}/lab_{t}.orders")) && l.contains(&format!("login to {refusing} refused")),
            "{l}"
        );
    }
    w.stop()?;
    w.start_with_env(&[("LABLAKE__SNOWFLAKE__CONNECTION__BASE_URL", &snowflake_url())])?;
    let mut c = client().await?;
    let db = format!("{prefix}{}", t.to_uppercase());
    let cols = [("id", "id"), ("patient", "patient"), ("amount", "amount")];
    await_equal(&mut w, &mut c, &db, &t, &cols, Duration::from_secs(60)).await?;
    let _ = w.stop();
    Ok(())
}

/// Snowflake answers 10 % of requests with 503 and applies 5 % (a COPY, a
/// MERGE, a ledger insert) then resets the connection before the answer, while
/// three tenants load: retried, and Snowflake ends exact (guarded MERGE, load
/// history, ledger). The seed is printed to replay a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_and_resetting_snowflake_ends_exact() -> anyhow::Result<()> {
    use lablake_tests::http_fault::{HttpFaultProxy, Rates};
    let seed = std::env::var("LABLAKE_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("fault seed {seed} (LABLAKE_FAULT_SEED={seed} replays it)");
    let target = lablake_tests::proxy::host_port(&snowflake_url());
    let proxy = HttpFaultProxy::start(&target, Rates { error: 0.10, reset_after: 0.05 }, seed).await?;
    let prefix = format!("LLT{}_", lablake_tests::rand_id(6).to_uppercase());
    let mut w = World::new(3, &[ORDERS_DDL], &sink_config_at(&prefix, &proxy.url())).await?;
    w.start()?;
    let mut conn = w.pool.get_conn().await?;
    for round in 0..4 {
        for (n, t) in w.tenants.clone().iter().enumerate() {
            conn.query_drop(format!("USE lab_{t}")).await?;
            let rows: Vec<String> = (0..100)
                .map(|i| format!("({}, 'p{n}-{i}', 'new', {i}.25, NOW(6), 'r{round}')", round * 1000 + i))
                .collect();
            conn.query_drop(format!("INSERT INTO orders VALUES {}", rows.join(", "))).await?;
            conn.query_drop(format!("UPDATE orders SET status = 'collected' WHERE id % 7 = {round}")).await?;
            conn.query_drop(format!("DELETE FROM orders WHERE id % 13 = {round}")).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut c = client().await?;
    for t in w.tenants.clone() {
        let db = format!("{prefix}{}", t.to_uppercase());
        await_equal(&mut w, &mut c, &db, &t, MY_COLUMNS, Duration::from_secs(240)).await?;
    }
    let (requests, errors, resets) = proxy.counts();
    eprintln!("injected over {requests} requests: {errors} errors, {resets} resets after applying");
    assert!(requests > 50 && errors > 0 && resets > 0, "faults injected: {requests} {errors} {resets} (seed {seed})");
    let _ = w.stop();
    Ok(())
}

/// A paused sink (SIGSTOP) whose lease a new sink took wakes up (SIGCONT)
/// with its in-flight work: its next checkpoint write is fenced, or, with
/// nothing left to load, its lease check fails, and it exits; Snowflake
/// stays exact (position-guarded MERGE). Three rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_sink_zombie_never_writes_after_its_successor() -> anyhow::Result<()> {
    let prefix = format!("LLT{}_", lablake_tests::rand_id(6).to_uppercase());
    let mut w = World::new(1, &[ORDERS_DDL], &sink_config(&prefix)).await?;
    let t = w.tenants[0].clone();
    let db = format!("{prefix}{}", t.to_uppercase());
    let _others = [lablake_tests::Reaped(w.spawn(&["source"])?), lablake_tests::Reaped(w.spawn(&["curate"])?)];
    let mut sink = lablake_tests::Reaped(w.spawn(&["sink"])?);
    let mut conn = w.pool.get_conn().await?;
    let mut c = client().await?;
    let signal = |child: &lablake_tests::Reaped, sig: &str| {
        std::process::Command::new("kill").args([sig, &child.id().to_string()]).status().map(|s| s.success())
    };
    for round in 0..4u32 {
        for i in 0..60 {
            let id = round * 100 + i;
            conn.query_drop(format!("INSERT INTO lab_{t}.orders VALUES ({id}, 'p{id}', 'new', 1.25, NOW(6), NULL)"))
                .await?;
        }
        conn.query_drop(format!("UPDATE lab_{t}.orders SET status = 'collected' WHERE id % 4 = {round}")).await?;
        await_equal(&mut w, &mut c, &db, &t, MY_COLUMNS, Duration::from_secs(120)).await?;
        if round == 3 {
            break;
        }
        anyhow::ensure!(signal(&sink, "-STOP")?, "SIGSTOP");
        let next = lablake_tests::Reaped(w.spawn(&["sink"])?);
        tokio::time::sleep(Duration::from_secs(2)).await;
        conn.query_drop(format!("DELETE FROM lab_{t}.orders WHERE id % 9 = {round}")).await?;
        await_equal(&mut w, &mut c, &db, &t, MY_COLUMNS, Duration::from_secs(120)).await?;
        anyhow::ensure!(signal(&sink, "-CONT")?, "SIGCONT");
        // Round 0 wakes it with nothing left to load (it learns from its
        // lease check); later rounds give it a batch to race its successor for.
        if round > 0 {
            conn.query_drop(format!("UPDATE lab_{t}.orders SET note = 'woken {round}' WHERE id % 5 = 0")).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(s) = sink.try_wait()? {
                break s;
            }
            anyhow::ensure!(Instant::now() < deadline, "the woken sink kept running:\n{}", w.log_tail());
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        anyhow::ensure!(!status.success(), "the woken sink exited successfully");
        sink = next;
    }
    let log = std::fs::read_to_string(&w.log_path)?;
    let fenced = log.lines().filter(|l| l.contains("lablake failed") && l.contains("fenced")).count();
    assert_eq!(fenced, 3, "each woken sink exited fenced:\n{}", w.log_tail());
    anyhow::ensure!(sink.try_wait()?.is_none(), "the live sink exited:\n{}", w.log_tail());
    Ok(())
}
