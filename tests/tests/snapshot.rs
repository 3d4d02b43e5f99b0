//! Snapshots (full loads) with the watermark method, end to end: every
//! scenario runs against both sources (`Kind::Mysql`, `Kind::Postgres`).
//! Rows that existed before the stream's start (binlog position /
//! replication slot) reach the lake only through the snapshot; concurrent
//! writes, key changes, kills and on-demand re-snapshots must still leave
//! the curated table equal to the source. The trait-level contract (chunk
//! order, watermark order, a snapshot row equal to a streamed row for every
//! type) is `lablake_source::conformance`, run by each connector's tests.

use std::time::Duration;

use lablake_tests::{Kind, World};

const DDL: &str = "CREATE TABLE orders (id BIGINT NOT NULL PRIMARY KEY, status VARCHAR(20), amount DECIMAL(12,2), \
                   note TEXT)";
const COLS: &[&str] = &["id", "status", "amount", "note"];

/// Multi-row INSERTs of `rows` orders (portable SQL: no sequences or CTEs).
fn preload(rows: u32) -> Vec<String> {
    (0..rows.div_ceil(1000))
        .map(|b| {
            let values: Vec<String> = (b * 1000 + 1..=((b + 1) * 1000).min(rows))
                .map(|g| format!("({g}, 'new', {}.{}, 'row {g}')", (g % 1000) / 10, (g % 1000) % 10))
                .collect();
            format!("INSERT INTO orders VALUES {}", values.join(", "))
        })
        .collect()
}

fn count_op(rows: &[std::collections::BTreeMap<String, String>], op: &str) -> usize {
    rows.iter().filter(|r| r["_op"] == op).count()
}

/// A world of `n` tenants whose `orders` hold `rows` rows written before the
/// stream's start.
async fn preloaded(kind: Kind, n: usize, rows: u32, extra: &str) -> anyhow::Result<World> {
    let preload = preload(rows);
    let mut ddl = vec![DDL];
    ddl.extend(preload.iter().map(String::as_str));
    World::with_source(kind, n, &ddl, extra).await
}

/// Three tenants with 20k rows each that exist only in the source: the
/// snapshot runs in 1,000-row chunks (three read in parallel per window)
/// while a writer updates, deletes, inserts and changes primary keys across
/// the whole key range. The curated tables equal the source at the end.
async fn snapshot_with_concurrent_writes_equals_the_source(kind: Kind) -> anyhow::Result<()> {
    let mut w = preloaded(kind, 3, 20_000, "[snapshot]\nchunk_rows = 1000\nparallel_chunks = 3").await?;
    w.start()?;
    for round in 0..150u32 {
        for t in &w.tenants {
            let lo: u32 = rand::random_range(1..20_000);
            let (gone, moved): (u32, u32) = (rand::random_range(1..20_000), rand::random_range(1..20_000));
            w.exec(
                t,
                &[
                    &format!(
                        "UPDATE orders SET status = 'seen', amount = amount + 1 WHERE id BETWEEN {lo} AND {lo} + 20"
                    ),
                    &format!("DELETE FROM orders WHERE id = {gone}"),
                    &format!("INSERT INTO orders VALUES ({}, 'late', 1.50, NULL)", 100_000 + round),
                    // A moved key never meets a taken one: keys above 500000 come only from here.
                    &format!("UPDATE orders SET id = id + 500000 WHERE id = {moved}"),
                ],
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in w.tenants.clone() {
        let expected = w.source_state(&t, "orders", COLS).await?;
        assert!(expected.len() > 19_000);
        w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(120)).await?;
        let rows = w.curated_rows(&t, "orders").await?;
        assert!(count_op(&rows, "r") > 15_000, "the rows before the stream's start came from the snapshot");
    }
    let _ = w.stop();
    Ok(())
}

/// SIGKILL during a snapshot of 60k rows, several times: the snapshot
/// resumes after its last delivered chunk (the rows read twice are bounded
/// by the chunks in flight at each kill), and the result is exact.
async fn a_killed_snapshot_resumes_from_its_last_chunk(kind: Kind) -> anyhow::Result<()> {
    const ROWS: usize = 60_000;
    const CHUNK: usize = 500;
    // 15k rows/s: the snapshot takes ~4 s of running time; three chunks read in parallel per window.
    let extra = format!("[snapshot]\nchunk_rows = {CHUNK}\nmax_rows_per_second = 15000\nparallel_chunks = 3");
    let mut w = preloaded(kind, 1, ROWS as u32, &extra).await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let kills = w.kill_repeatedly(4, 4, 700..1500, || true).await?;
    let expected = w.source_state(&t, "orders", COLS).await?;
    w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(120)).await?;
    let reads = count_op(&w.curated_rows(&t, "orders").await?, "r");
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
async fn on_demand_snapshot_rereads_a_table_and_reports_progress(kind: Kind) -> anyhow::Result<()> {
    let mut w = World::with_source(kind, 1, &[DDL], "[snapshot]\nchunk_rows = 700").await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let preload = preload(5_000);
    w.exec(&t, &preload.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let expected = w.source_state(&t, "orders", COLS).await?;
    w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(60)).await?;
    let before = count_op(&w.curated_rows(&t, "orders").await?, "r");
    let out = w.run_cli(&["snapshot", "--tenant", &t, "--table", "orders"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let source = match kind {
        Kind::Mysql => "main",
        Kind::Postgres => "pg",
    };
    assert!(
        stdout.contains(&format!("requested: source {source} {t}/lab_{t}.orders"))
            && stdout.contains("5000 / ~")
            && stdout.contains("done"),
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

/// One `#[tokio::test]` per scenario and source kind.
macro_rules! on_both_sources {
    ($($scenario:ident),* $(,)?) => {
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(lablake_tests::Kind::Mysql).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(lablake_tests::Kind::Postgres).await
                }
            )*
        }
    };
}

on_both_sources!(
    snapshot_with_concurrent_writes_equals_the_source,
    a_killed_snapshot_resumes_from_its_last_chunk,
    on_demand_snapshot_rereads_a_table_and_reports_progress,
);
