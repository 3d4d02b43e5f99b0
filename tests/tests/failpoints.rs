//! `lablake` aborted (like a SIGKILL) at a named failpoint in each crash
//! window of the source, snapshot and curator stages — a record sent but not
//! acknowledged, acknowledged but not checkpointed, checkpointed but the
//! server not told (PostgreSQL's slot), a snapshot chunk acknowledged before
//! its progress, a batch intent without its file, a file without its commit,
//! a commit — then started again, on both sources. The oracle checks every
//! change: a version column incremented by each update must appear per key in
//! order, none missing or repeated, and the final state equals the source's.
//! (The Snowflake sink's failpoints are in `snowflake.rs`.)

use std::time::{Duration, Instant};

use lablake_tests::{CRASH_WINDOWS, Kind, World, version_violations};

const DDL: &str = "CREATE TABLE orders (id BIGINT NOT NULL PRIMARY KEY, status VARCHAR(20), amount DECIMAL(12,2), \
                   note TEXT, version INT NOT NULL)";
const COLS: &[&str] = &["id", "status", "amount", "note", "version"];

/// 100 inserts, an update of a third of the rows (version + 1) and a few
/// deletes per tenant, each statement a transaction.
async fn write(w: &World, round: u32) -> anyhow::Result<()> {
    for t in &w.tenants {
        let rows: Vec<String> =
            (0..100).map(|i| format!("({}, 'new', {}.50, 'round {round}', 1)", 10_000 + round * 1000 + i, i)).collect();
        w.exec(t, &[&format!("INSERT INTO orders VALUES {}", rows.join(", "))]).await?;
        w.exec(t, &[&format!("UPDATE orders SET version = version + 1, status = 'seen' WHERE id % 3 = {}", round % 3)])
            .await?;
        w.exec(t, &[&format!("DELETE FROM orders WHERE id % 37 = {}", round % 37)]).await?;
    }
    Ok(())
}

async fn every_crash_window_is_survived(kind: Kind) -> anyhow::Result<()> {
    let mut w = World::with_source(kind, 2, &[DDL], "").await?;
    // Rows before the first start: the tables' first snapshot has a chunk to cut.
    for t in &w.tenants {
        let rows: Vec<String> = (0..300).map(|i| format!("({i}, 'old', {i}.25, 'seed', 1)")).collect();
        w.exec(t, &[&format!("INSERT INTO orders VALUES {}", rows.join(", "))]).await?;
    }
    let mut round = 0;
    for (point, hit) in CRASH_WINDOWS {
        w.start_with_env(&[("LABLAKE_FAILPOINTS", &format!("{point}@{hit}"))])?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            write(&w, round).await?;
            round += 1;
            if let Ok(status) = w.wait_exit(Duration::from_millis(700)).await {
                break status;
            }
            anyhow::ensure!(Instant::now() < deadline, "{point}@{hit} never fired:\n{}", w.log_tail());
        };
        assert!(!status.success(), "{point}: the failpoint aborts the process");
        let log = std::fs::read_to_string(&w.log_path)?;
        assert!(
            log.lines().any(|l| l.contains("failpoint reached") && l.contains(point)),
            "{point} did not fire:\n{}",
            w.log_tail()
        );
    }
    w.start()?;
    for _ in 0..2 {
        write(&w, round).await?;
        round += 1;
    }
    w.await_exact("orders", "id", COLS, Duration::from_secs(120)).await?;
    for t in w.tenants.clone() {
        let rows = w.curated_rows(&t, "orders").await?;
        let wrong = version_violations(&rows, "id", "version", 10);
        assert!(wrong.is_empty(), "{t}: changes missing, repeated or out of order: {wrong:#?}");
    }
    w.assert_running()?;
    let _ = w.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_every_crash_window_is_survived() -> anyhow::Result<()> {
    every_crash_window_is_survived(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_crash_window_is_survived() -> anyhow::Result<()> {
    every_crash_window_is_survived(Kind::Postgres).await
}
