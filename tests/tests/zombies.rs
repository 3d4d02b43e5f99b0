//! Zombies: a stage's process is paused (SIGSTOP) long enough for another
//! process to take its lease and carry on; then it wakes up (SIGCONT) with
//! its old state and in-flight work. It must never write after the new owner:
//! its next checkpoint write is fenced and it exits naming the fencing, the
//! new owner goes on, and the lake stays exact with each change once. Three
//! rounds per stage, the source and the curator each running in their own
//! process (`lablake source`, `lablake curate`).

use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lablake_tests::{Kind, Reaped, World, duplicated_changes};

const DDL: &str = "CREATE TABLE cases (id BIGINT NOT NULL PRIMARY KEY, state VARCHAR(20), n INT)";
const COLS: &[&str] = &["id", "state", "n"];

fn signal(child: &Child, sig: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill").args([sig, &child.id().to_string()]).status()?.success();
    anyhow::ensure!(ok, "kill {sig} {}", child.id());
    Ok(())
}

async fn write(w: &World, round: u32) -> anyhow::Result<()> {
    for t in &w.tenants {
        let rows: Vec<String> = (0..100).map(|i| format!("({}, 'open', {round})", round * 1000 + i)).collect();
        w.exec(t, &[&format!("INSERT INTO cases VALUES {}", rows.join(", "))]).await?;
        w.exec(t, &[&format!("UPDATE cases SET state = 'closed', n = n + 1 WHERE id % 3 = {}", round % 3)]).await?;
    }
    Ok(())
}

async fn await_exact(w: &mut World) -> anyhow::Result<()> {
    for t in w.tenants.clone() {
        let expected = w.source_state(&t, "cases", COLS).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if w.curated_state(&t, "cases", "id").await? == expected {
                break;
            }
            if Instant::now() > deadline {
                bail!("curated cases of {t} differ from the source after 120 s; log:\n{}", w.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let rows = w.curated_rows(&t, "cases").await?;
        assert_eq!(duplicated_changes(&rows, "id"), 0, "each change once in {t}'s curated files");
    }
    Ok(())
}

/// Waits until the woken zombie exits; it must fail (fenced), not succeed.
async fn await_fenced_exit(w: &World, zombie: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = zombie.try_wait()? {
            anyhow::ensure!(!status.success(), "the zombie exited successfully");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the zombie kept running after waking up; log:\n{}", w.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `stage` is `source` or `curate`; the other stage runs throughout.
async fn zombie_rounds(kind: Kind, stage: &str) -> anyhow::Result<()> {
    let mut w = World::with_source(kind, 2, &[DDL], "").await?;
    let other = if stage == "source" { "curate" } else { "source" };
    let mut steady = Reaped(w.spawn(&[other])?);
    let mut current = Reaped(w.spawn(&[stage])?);
    write(&w, 0).await?;
    await_exact(&mut w).await?;
    for round in 1..=3u32 {
        signal(&current, "-STOP")?;
        // The new owner takes the lease (a higher generation) while the old one sleeps.
        let next = Reaped(w.spawn(&[stage])?);
        tokio::time::sleep(Duration::from_secs(2)).await;
        write(&w, round).await?;
        await_exact(&mut w).await.with_context(|| format!("round {round}: with the new {stage}"))?;
        signal(&current, "-CONT")?;
        // The zombie may still hold work: more changes make it try to write.
        write(&w, 10 + round).await?;
        await_fenced_exit(&w, &mut current).await.with_context(|| format!("round {round}"))?;
        await_exact(&mut w).await.with_context(|| format!("round {round}: after the zombie woke up"))?;
        current = next;
    }
    let log = std::fs::read_to_string(&w.log_path)?;
    let fenced = log.lines().filter(|l| l.contains("lablake failed") && l.contains("fenced")).count();
    assert_eq!(fenced, 3, "each zombie exited fenced:\n{}", w.log_tail());
    for c in [&mut current, &mut steady] {
        anyhow::ensure!(c.try_wait()?.is_none(), "a live owner exited; log:\n{}", w.log_tail());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_source_zombie_never_writes_after_its_successor() -> anyhow::Result<()> {
    zombie_rounds(Kind::Mysql, "source").await
}

/// The paused PostgreSQL source's walsender keeps the replication slot (one
/// reader per slot): the new owner, holding the lease, ends it instead of
/// waiting for `wal_sender_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_postgres_source_zombie_never_writes_after_its_successor() -> anyhow::Result<()> {
    zombie_rounds(Kind::Postgres, "source").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_curator_zombie_never_writes_after_its_successor() -> anyhow::Result<()> {
    zombie_rounds(Kind::Mysql, "curate").await
}
