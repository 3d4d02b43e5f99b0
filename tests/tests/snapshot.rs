//! Snapshots (full loads) of PostgreSQL tables with the watermark method,
//! end to end: rows that existed before the replication slot reach the lake
//! only through the snapshot; concurrent writes, kills and on-demand
//! re-snapshots must still leave the curated table equal to the source.

use std::time::Duration;

use lablake_tests::{World, pg_client, pg_source_rows};

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
                     INSERT INTO lab_{t}.orders VALUES ({new_id}, 'late', 1.50, NULL);",
                    gone
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
    let extra = format!("[snapshot]\nchunk_rows = {CHUNK}\nmax_rows_per_second = 15000");
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
    assert!(reads < ROWS + kills * 20 * CHUNK, "{reads} snapshot rows after {kills} kills: not resumed");
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
