//! Several `lablake` instances share one deployment: curators through
//! Kafka's consumer-group assignment (`curate.assignment = "group"`, each
//! partition fenced by its own lease), the source and sink stages through
//! standby leases (`[leases] standby = true`: one instance holds the lease,
//! the others take it over when the holder falls silent for the ttl).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lablake_tests::{Reaped, World};

const DDL: &str = "CREATE TABLE orders (id BIGINT NOT NULL PRIMARY KEY, status VARCHAR(20), amount DECIMAL(12,2), \
                   note TEXT)";
const COLS: &[&str] = &["id", "status", "amount", "note"];
const LEASE_TTL_S: u64 = 12;

/// Group assignment for the curators; the source's lease as a standby.
const ENV: &[(&str, &str)] = &[("LABLAKE__CURATE__ASSIGNMENT", "group"), ("LABLAKE__CURATE__SESSION_TIMEOUT", "6s")];

struct Instance {
    name: &'static str,
    child: Reaped,
    log: PathBuf,
}

impl Instance {
    fn start(w: &World, name: &'static str) -> anyhow::Result<Instance> {
        let log = std::env::temp_dir().join(format!("lablake-test-{}-{name}.log", w.id));
        let child = Reaped(w.spawn_instance(&["run"], ENV, &log)?);
        Ok(Instance { name, child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Partitions this instance started curating, over its life.
    fn assignments(&self) -> usize {
        self.log().lines().filter(|l| l.contains("lablake_pipeline::curator: assigned")).count()
    }

    /// Whether this instance runs the source now: it started it and was not
    /// superseded since.
    fn holds_the_source(&self) -> bool {
        let log = self.log();
        let started = log.rfind("starting source from its configured start").max(log.rfind("resuming source"));
        started.is_some() && started > log.rfind("back to standby")
    }

    fn assert_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("instance {} exited with {status}:\n{}", self.name, tail(&self.log));
        }
        let log = self.log();
        anyhow::ensure!(!log.contains("lablake failed"), "instance {} failed:\n{}", self.name, tail(&self.log));
        // In-process restarts after a transient error are allowed, a loop is not.
        let restarts = log.matches("starting it again from its checkpoints").count();
        anyhow::ensure!(
            restarts <= 2,
            "instance {} restarted a stage {restarts} times:\n{}",
            self.name,
            tail(&self.log)
        );
        Ok(())
    }
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// 200 inserts and an update per tenant, each statement a transaction.
async fn write(w: &World, round: u32) -> anyhow::Result<()> {
    for t in &w.tenants {
        let rows: Vec<String> =
            (0..200).map(|i| format!("({}, 'new', {}.50, 'round {round}')", round * 1000 + i, i)).collect();
        w.exec(t, &[&format!("INSERT INTO orders VALUES {}", rows.join(", "))]).await?;
        w.exec(t, &[&format!("UPDATE orders SET status = 'seen' WHERE id % 7 = {}", round % 7)]).await?;
    }
    Ok(())
}

/// Three instances under load: the curators' six partitions spread over all
/// three, one source runs and two wait. The instance running the source is
/// SIGKILLed while changes keep coming: a standby takes the source over once
/// its lease has not been renewed for the ttl; then an instance is added back
/// and the group is rebalanced over the three live ones. The lake ends exact
/// with each change once, and no instance exits or restarts in a loop.
///
/// (Against Kafka or Redpanda the dead member's partitions move after the
/// session timeout already; tansu 0.6 rebalances only when a member joins or
/// leaves — see docs/reliability.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_work_and_survive_losing_one() -> anyhow::Result<()> {
    let extra = format!("\n[leases]\nstandby = true\nttl = \"{LEASE_TTL_S}s\"\n");
    let mut w = World::new(3, &[DDL], &extra).await?;
    let mut instances = vec![Instance::start(&w, "a")?];
    // The first holds the source; the others start as its standbys.
    tokio::time::sleep(Duration::from_secs(2)).await;
    instances.push(Instance::start(&w, "b")?);
    instances.push(Instance::start(&w, "c")?);
    let mut round = 0;
    for _ in 0..3 {
        write(&w, round).await?;
        round += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    w.await_exact("orders", "id", COLS, Duration::from_secs(90)).await?;
    // Rebalances settle a few seconds after the last member joined.
    let deadline = Instant::now() + Duration::from_secs(60);
    while instances.iter().any(|i| i.assignments() == 0) {
        anyhow::ensure!(Instant::now() < deadline, "a member never got a partition");
        write(&w, round).await?;
        round += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let holders: Vec<&str> = instances.iter().filter(|i| i.holds_the_source()).map(|i| i.name).collect();
    assert_eq!(holders, ["a"], "one instance runs the source, the first");
    for i in &mut instances {
        i.assert_alive()?;
    }

    // Lose the instance that runs the source (and curates some partitions).
    let mut lost = instances.remove(0);
    lost.child.kill()?;
    lost.child.wait()?;
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(LEASE_TTL_S + 30);
    let mut taken_over = None;
    while taken_over.is_none() || round < 9 {
        write(&w, round).await?;
        round += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if taken_over.is_none() && instances.iter().any(Instance::holds_the_source) {
            taken_over = Some(killed.elapsed());
        }
        anyhow::ensure!(Instant::now() < deadline, "no standby took the source over");
    }
    let holders: Vec<&str> = instances.iter().filter(|i| i.holds_the_source()).map(|i| i.name).collect();
    assert_eq!(holders.len(), 1, "exactly one standby took the source over: {holders:?}");

    // An instance is added back; the group spreads the partitions over the three.
    let added = Instant::now();
    instances.push(Instance::start(&w, "d")?);
    let deadline = Instant::now() + Duration::from_secs(60);
    while instances.last().is_some_and(|d| d.assignments() == 0) {
        anyhow::ensure!(Instant::now() < deadline, "the new member never got a partition");
        write(&w, round).await?;
        round += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    write(&w, round).await?;
    w.await_exact("orders", "id", COLS, Duration::from_secs(90)).await?;
    eprintln!(
        "source taken over {:.1} s after the kill (lease ttl {LEASE_TTL_S} s); lake exact {:.1} s after an \
         instance was added back",
        taken_over.unwrap_or_default().as_secs_f64(),
        added.elapsed().as_secs_f64()
    );
    for i in &mut instances {
        i.assert_alive()?;
    }
    for i in &instances {
        let _ = std::process::Command::new("kill").args(["-TERM", &i.child.id().to_string()]).status();
    }
    Ok(())
}
