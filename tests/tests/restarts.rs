//! The source databases crash and come back while `lablake` runs: MariaDB is
//! SIGKILLed, PostgreSQL stopped in immediate mode (its crash: no checkpoint,
//! recovery at the next start, the slot back at its last persisted position).
//! Each runs twice per test, with changes before, between and after; the
//! stages retry in-process and the lake ends exact with every change once.
//!
//! These tests restart a service every other test uses, so they run alone:
//! their names start with `restarts_`, which the default nextest profile
//! leaves out and the `restarts` profile runs one at a time
//! (`cargo nextest run --profile restarts`, as `dev/test` does).

use std::time::{Duration, Instant};

use anyhow::bail;
use lablake_tests::{Kind, World, duplicated_changes, services};

const DDL: &str = "CREATE TABLE results (id BIGINT NOT NULL PRIMARY KEY, analyte VARCHAR(20), value DECIMAL(12,3), \
                   flag VARCHAR(4))";
const COLS: &[&str] = &["id", "analyte", "value", "flag"];

async fn write(w: &World, round: u32) -> anyhow::Result<()> {
    for t in &w.tenants {
        let rows: Vec<String> = (0..150).map(|i| format!("({}, 'K', {}.125, NULL)", round * 1000 + i, i)).collect();
        w.exec(t, &[&format!("INSERT INTO results VALUES {}", rows.join(", "))]).await?;
        w.exec(t, &[&format!("UPDATE results SET flag = 'H' WHERE id % 5 = {}", round % 5)]).await?;
        w.exec(t, &[&format!("DELETE FROM results WHERE id % 11 = {}", round % 11)]).await?;
    }
    Ok(())
}

/// Waits until the database takes statements again.
async fn await_source(w: &World) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let t = w.tenants[0].clone();
    loop {
        match w.exec(&t, &["SELECT 1"]).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("the source database is not back after 60 s: {e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

async fn a_crashed_source_database_loses_nothing(kind: Kind) -> anyhow::Result<()> {
    let service = match kind {
        Kind::Mysql => "mysql",
        Kind::Postgres => "postgres",
    };
    let mut w = World::with_source(kind, 2, &[DDL], "").await?;
    w.start()?;
    for round in 0..3 {
        write(&w, round).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut back = Instant::now();
    for crash in 0..2u32 {
        write(&w, 10 + crash).await?;
        services(&["restart", "--crash", service])?;
        await_source(&w).await?;
        back = Instant::now();
        w.assert_running()?;
        for round in 0..2 {
            write(&w, 20 + crash * 10 + round).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for t in w.tenants.clone() {
        let expected = w.source_state(&t, "results", COLS).await?;
        w.await_curated_state(&t, "results", "id", &expected, Duration::from_secs(180)).await?;
        let rows = w.curated_rows(&t, "results").await?;
        assert_eq!(duplicated_changes(&rows, "id"), 0, "each change once in {t}'s curated files");
    }
    // A measurement for docs/benchmarks.md, not an assertion (it includes the writes after the restart).
    eprintln!(
        "recovery: {service} crash: lake exact {:.1} s after the database was back",
        back.elapsed().as_secs_f64()
    );
    w.assert_running()?;
    let log = std::fs::read_to_string(&w.log_path)?;
    assert!(
        log.lines().any(|l| l.contains("stage failed; starting it again") && l.contains("source")),
        "the source stage was restarted in-process:\n{}",
        w.log_tail()
    );
    assert_eq!(log.matches("lablake failed").count(), 0, "the process never exited:\n{}", w.log_tail());
    let _ = w.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_mysql_crash_loses_nothing() -> anyhow::Result<()> {
    a_crashed_source_database_loses_nothing(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_postgres_crash_loses_nothing() -> anyhow::Result<()> {
    a_crashed_source_database_loses_nothing(Kind::Postgres).await
}
