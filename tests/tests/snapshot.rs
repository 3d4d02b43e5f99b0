//! Snapshots (full loads) with the watermark method, end to end, on both
//! sources (the conformance suite of `Snapshotter`): rows that existed
//! before the stream's start (replication slot / binlog position) reach the
//! lake only through the snapshot; concurrent writes, key changes, kills and
//! on-demand re-snapshots must still leave the curated table equal to the
//! source, and a snapshot row must equal a streamed row of the same data.

use std::time::Duration;

use lablake_tests::{World, pg_client, pg_source_rows, source_rows};
use mysql_async::prelude::Queryable;

const DDL: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, status text, amount numeric(12,2), note text)";
const COLS: &[(&str, &str)] = &[("id", "id"), ("status", "status"), ("amount", "amount"), ("note", "note")];

fn preload(rows: u32) -> String {
    format!("INSERT INTO orders SELECT g, 'new', (g % 1000) / 10.0, 'row ' || g FROM generate_series(1, {rows}) g")
}

fn count_op(rows: &[std::collections::BTreeMap<String, String>], op: &str) -> usize {
    rows.iter().filter(|r| r["_op"] == op).count()
}

/// Three tenants with 20k rows each that exist only in the source (written
/// before the slot): the snapshot runs in 1,000-row chunks while a writer
/// updates, deletes and inserts across the whole key range. The curated
/// tables equal the source at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_with_concurrent_writes_equals_the_source() -> anyhow::Result<()> {
    let preload = preload(20_000);
    let mut w = World::new_postgres(3, &[DDL, &preload], "[snapshot]\nchunk_rows = 1000").await?;
    w.start()?;
    let tenants = w.tenants.clone();
    let writer = tokio::spawn(async move {
        let c = pg_client().await?;
        for round in 0..150 {
            for t in &tenants {
                let lo: u32 = rand::random_range(1..20_000);
                let gone: u32 = rand::random_range(1..20_000);
                let new_id = 100_000 + round;
                c.batch_execute(&format!(
                    "UPDATE lab_{t}.orders SET status = 'seen', amount = amount + 1 WHERE id BETWEEN {lo} AND {lo} + 20;
                     DELETE FROM lab_{t}.orders WHERE id = {};
                     INSERT INTO lab_{t}.orders VALUES ({new_id}, 'late', 1.50, NULL);
                     UPDATE lab_{t}.orders SET id = id + 500000 WHERE id = {moved};",
                    gone,
                    moved = rand::random_range(1..20_000u32),
                ))
                .await?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    });
    writer.await??;
    let c = pg_client().await?;
    for t in w.tenants.clone() {
        let expected = pg_source_rows(&c, &t, "orders", COLS).await?;
        assert!(expected.len() > 19_000);
        w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(120)).await?;
        let rows = w.curated_rows(&t, "orders").await?;
        assert!(count_op(&rows, "r") > 15_000, "the pre-slot rows came from the snapshot");
    }
    let _ = w.stop();
    Ok(())
}

/// SIGKILL during a snapshot of 60k rows, several times: the snapshot
/// resumes after its last delivered chunk (the rows read twice are bounded
/// by the chunks in flight at each kill), and the result is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_snapshot_resumes_from_its_last_chunk() -> anyhow::Result<()> {
    const ROWS: usize = 60_000;
    const CHUNK: usize = 500;
    let preload = preload(ROWS as u32);
    // 15k rows/s: the snapshot takes ~4 s of running time.
    // Three chunks read in parallel per window.
    let extra = format!("[snapshot]\nchunk_rows = {CHUNK}\nmax_rows_per_second = 15000\nparallel_chunks = 3");
    let mut w = World::new_postgres(1, &[DDL, &preload], &extra).await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let kills = w.kill_repeatedly(4, 4, 700..1500, || true).await?;
    let c = pg_client().await?;
    let expected = pg_source_rows(&c, &t, "orders", COLS).await?;
    w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(120)).await?;
    let rows = w.curated_rows(&t, "orders").await?;
    let reads = count_op(&rows, "r");
    // Restarting from zero would read ≥ 60k rows per restart; resuming re-reads
    // at most the chunks not yet acknowledged at each kill.
    assert!(reads >= ROWS, "{reads} snapshot rows");
    assert!(reads < ROWS + kills * 60 * CHUNK, "{reads} snapshot rows after {kills} kills: not resumed");
    let log = std::fs::read_to_string(&w.log_path)?;
    let started: Vec<&str> = log.lines().filter(|l| l.contains("snapshot started")).collect();
    assert!(started.iter().any(|l| l.contains("resume=true")), "no snapshot resumed:\n{}", started.join("\n"));
    let _ = w.stop();
    Ok(())
}

/// `lablake snapshot --tenant T --table orders` re-reads a streamed table on
/// demand while the pipeline runs and reports its progress until done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_snapshot_rereads_a_table_and_reports_progress() -> anyhow::Result<()> {
    let mut w = World::new_postgres(1, &[DDL], "[snapshot]\nchunk_rows = 700").await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let c = pg_client().await?;
    c.batch_execute(&format!("SET search_path = lab_{t}; {}; RESET search_path", preload(5_000))).await?;
    let expected = pg_source_rows(&c, &t, "orders", COLS).await?;
    w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(60)).await?;
    let before = count_op(&w.curated_rows(&t, "orders").await?, "r");
    let out = w.run_cli(&["snapshot", "--tenant", &t, "--table", "orders"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("requested: source pg") && stdout.contains("5000 / ~") && stdout.contains("done"),
        "{stdout}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let after = count_op(&w.curated_rows(&t, "orders").await?, "r");
        if after >= before + 5_000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "on-demand snapshot rows not curated: {before} → {after}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(60)).await?;
    // An unknown tenant is a clear error.
    let out = w.run_cli(&["snapshot", "--tenant", "nosuchtenant", "--no-wait"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no table of tenant `nosuchtenant`"));
    let _ = w.stop();
    Ok(())
}

// ---- MySQL / MariaDB (watermarks written to the signalling table) ----

const MY_DDL: &str = "CREATE TABLE orders (id BIGINT NOT NULL PRIMARY KEY, status VARCHAR(20), \
                      amount DECIMAL(12,2), note TEXT) ENGINE=InnoDB";

/// Multi-row INSERTs of `rows` orders (portable: no sequence tables or CTE limits).
fn my_preload(rows: u32) -> Vec<String> {
    (0..rows.div_ceil(1000))
        .map(|b| {
            let values: Vec<String> = (b * 1000 + 1..=((b + 1) * 1000).min(rows))
                .map(|g| format!("({g}, 'new', {}.{}, 'row {g}')", (g % 1000) / 10, (g % 1000) % 10))
                .collect();
            format!("INSERT INTO orders VALUES {}", values.join(", "))
        })
        .collect()
}

/// Three tenants with 20k rows each that exist only before the binlog start
/// position: the snapshot runs in 1,000-row chunks while a writer updates,
/// deletes, inserts and changes primary keys across the whole key range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_snapshot_with_concurrent_writes_equals_the_source() -> anyhow::Result<()> {
    let preload = my_preload(20_000);
    let mut ddl = vec![MY_DDL];
    ddl.extend(preload.iter().map(String::as_str));
    // Three chunks read in parallel per window.
    let mut w = World::new(3, &ddl, "[snapshot]\nchunk_rows = 1000\nparallel_chunks = 3").await?;
    w.start()?;
    let (pool, tenants) = (w.pool.clone(), w.tenants.clone());
    let writer = tokio::spawn(async move {
        let mut c = pool.get_conn().await?;
        for round in 0..150u32 {
            for t in &tenants {
                let lo: u32 = rand::random_range(1..20_000);
                let gone: u32 = rand::random_range(1..20_000);
                let moved: u32 = rand::random_range(1..20_000);
                let new_id = 100_000 + round;
                c.query_drop(format!(
                    "UPDATE lab_{t}.orders SET status = 'seen', amount = amount + 1 WHERE id BETWEEN {lo} AND {lo} + 20"
                ))
                .await?;
                c.query_drop(format!("DELETE FROM lab_{t}.orders WHERE id = {gone}")).await?;
                c.query_drop(format!("INSERT INTO lab_{t}.orders VALUES ({new_id}, 'late', 1.50, NULL)")).await?;
                c.query_drop(format!("UPDATE IGNORE lab_{t}.orders SET id = id + 500000 WHERE id = {moved}")).await?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    });
    writer.await??;
    for t in w.tenants.clone() {
        let expected = source_rows(&w.pool, &t, "orders", COLS).await?;
        assert!(expected.len() > 19_000);
        w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(120)).await?;
        let rows = w.curated_rows(&t, "orders").await?;
        assert!(count_op(&rows, "r") > 15_000, "the rows before the binlog start came from the snapshot");
    }
    let _ = w.stop();
    Ok(())
}

/// SIGKILL during a MySQL snapshot of 60k rows, several times: resumed after
/// the last delivered chunk, exact result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mysql_snapshot_resumes_from_its_last_chunk() -> anyhow::Result<()> {
    const ROWS: usize = 60_000;
    const CHUNK: usize = 500;
    let preload = my_preload(ROWS as u32);
    let mut ddl = vec![MY_DDL];
    ddl.extend(preload.iter().map(String::as_str));
    let extra = format!("[snapshot]\nchunk_rows = {CHUNK}\nmax_rows_per_second = 15000");
    let mut w = World::new(1, &ddl, &extra).await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let kills = w.kill_repeatedly(4, 4, 700..1500, || true).await?;
    let expected = source_rows(&w.pool, &t, "orders", COLS).await?;
    w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(120)).await?;
    let reads = count_op(&w.curated_rows(&t, "orders").await?, "r");
    assert!(reads >= ROWS, "{reads} snapshot rows");
    assert!(reads < ROWS + kills * 20 * CHUNK, "{reads} snapshot rows after {kills} kills: not resumed");
    let log = std::fs::read_to_string(&w.log_path)?;
    assert!(log.lines().any(|l| l.contains("snapshot started") && l.contains("resume=true")), "no snapshot resumed");
    let _ = w.stop();
    Ok(())
}

const MY_TYPES_DDL: &str = "CREATE TABLE typed (
    id INT NOT NULL PRIMARY KEY,
    u INT UNSIGNED, big BIGINT UNSIGNED, tiny TINYINT, f FLOAT, d DOUBLE, amount DECIMAL(20,6),
    y YEAR, dt DATE, t TIME(3), dtm DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL,
    e ENUM('low','high'), s SET('a','b','c'), b BIT(12), bin BINARY(4), vb VARBINARY(10),
    latin VARCHAR(20) CHARACTER SET latin1, txt MEDIUMTEXT, doc JSON
) ENGINE=InnoDB";

const MY_TYPED_VALUES: &str = "4294967295, 18446744073709551615, -128, 1.5, -2.25e-300, -12345678901234.000001, \
    2024, '2024-02-29', '-838:59:59.999', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.123456', 'high', 'a,c', \
    b'101010101010', x'0102', x'00ff', 'caf\u{e9}', REPEAT('x', 70000), '{\"b\": [1, 2.50, null], \"a\": \"\u{e9}\"}'";

/// A snapshot row equals a streamed row of the same values, for every
/// column type: row 1 is read by the snapshot, row 2 (same values) streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_snapshot_rows_equal_streamed_rows_for_every_type() -> anyhow::Result<()> {
    let insert1 = format!("INSERT INTO typed VALUES (1, {MY_TYPED_VALUES})");
    let nulls = "INSERT INTO typed (id) VALUES (3)";
    let mut w = World::new(1, &[MY_TYPES_DDL, &insert1, nulls], "").await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let mut c = w.pool.get_conn().await?;
    c.query_drop(format!("INSERT INTO lab_{t}.typed VALUES (2, {MY_TYPED_VALUES})")).await?;
    c.query_drop(format!("INSERT INTO lab_{t}.typed (id) VALUES (4)")).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = w.curated_rows(&t, "typed").await?;
        let want = [("1", "r"), ("2", "c"), ("3", "r"), ("4", "c")];
        if want.iter().all(|(id, op)| rows.iter().any(|r| r["id"] == *id && r["_op"] == *op)) {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "typed rows not curated:\n{}", w.log_tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Rows inserted after the start may also be read by the snapshot: pick by operation.
    let by_id = |id: &str, op: &str| rows.iter().find(|r| r["id"] == id && r["_op"] == op).cloned().expect("row");
    let strip = |mut r: std::collections::BTreeMap<String, String>| {
        r.retain(|k, _| !k.starts_with('_') && k != "id");
        r
    };
    assert_eq!(strip(by_id("1", "r")), strip(by_id("2", "c")));
    assert_eq!(strip(by_id("3", "r")), strip(by_id("4", "c")));
    let _ = w.stop();
    Ok(())
}
