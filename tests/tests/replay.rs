//! Replay (ADR 0013): a tenant's curated data rebuilt from its topics into a
//! new generation while every tenant keeps changing, the replay killed in
//! its build (at the curator's crash windows and by SIGKILL) and at its
//! cut-over, a reader following the active generation throughout; then a
//! rollback. The oracle: per tenant, the active generation's curated state
//! equals the source, each change once and in order (a version column
//! counts the updates per key), the other tenants untouched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lablake_checkpoint::{BatchStore, GenerationState, GenerationStore, PartitionRef};
use lablake_tests::{
    Kind, Reaped, World, curated_rows_of_generation, curated_state, duplicated_changes, exec_on, snowflake,
    version_violations,
};
use rand::{Rng, SeedableRng};

const DDL: &str = "CREATE TABLE results (id BIGINT NOT NULL PRIMARY KEY, analyte VARCHAR(20), value DECIMAL(12,3), \
                   flag VARCHAR(4), version INT NOT NULL)";
const COLS: &[&str] = &["id", "analyte", "value", "flag", "version"];
/// Rows per tenant before the first start; never deleted, so a reader of a
/// complete generation always sees at least these.
const SEED: u64 = 3_000;

/// Every 200 ms, per tenant: 40 inserts (version 1) from id `next` on, an
/// update of 40 recent rows (version + 1), a delete of 3 rows above the seed.
fn start_writer(
    w: &World,
    stop: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (kind, pool, tenants) = (w.kind, w.pool.clone(), w.tenants.clone());
    tokio::spawn(async move {
        let mut next = next_id.load(Ordering::Relaxed);
        let mut rng = rand::rngs::StdRng::from_os_rng();
        while !stop.load(Ordering::Relaxed) {
            let values: Vec<String> =
                (next..next + 40).map(|id| format!("({id}, 'K{}', {}.125, NULL, 1)", id % 40, id % 1000)).collect();
            let lo = rng.random_range(next.saturating_sub(200).max(SEED)..=next);
            let gone = rng.random_range(SEED..next.max(SEED + 1));
            let insert = format!("INSERT INTO results VALUES {}", values.join(", "));
            let update =
                format!("UPDATE results SET version = version + 1, flag = 'H' WHERE id >= {lo} AND id < {}", lo + 40);
            let delete = format!("DELETE FROM results WHERE id >= {gone} AND id < {}", gone + 3);
            for t in &tenants {
                for statement in [&insert, &update, &delete] {
                    exec_on(kind, &pool, &format!("lab_{t}"), &[statement]).await?;
                }
            }
            next += 40;
            next_id.store(next, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    })
}

/// The curated state of a tenant's `results` in generation `g`.
async fn state_in(
    w: &World,
    tenant: &str,
    g: u32,
) -> anyhow::Result<(BTreeMap<String, BTreeMap<String, String>>, Vec<BTreeMap<String, String>>)> {
    let rows = curated_rows_of_generation(&w.lake()?, tenant, &format!("lab_{tenant}"), "results", g).await?;
    Ok((curated_state(rows.clone(), "id"), rows))
}

/// Waits until every tenant's active generation equals the source.
async fn await_exact_in_active(w: &mut World, timeout: Duration) -> anyhow::Result<()> {
    let store = w.checkpoint_store().await?;
    for t in w.tenants.clone() {
        let expected = w.source_state(&t, "results", COLS).await?;
        let deadline = Instant::now() + timeout;
        loop {
            w.assert_running()?;
            let g = store.load_generations(&t).await?.active;
            let (got, rows) = state_in(w, &t, g).await?;
            if got == expected {
                anyhow::ensure!(duplicated_changes(&rows, "id") == 0, "{t}: a change twice in generation {g}");
                let wrong = version_violations(&rows, "id", "version", 10);
                anyhow::ensure!(wrong.is_empty(), "{t} generation {g}: changes missing or out of order: {wrong:#?}");
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{t}: generation {g} differs from the source after {timeout:?}: {} rows, source {}\n{}",
                got.len(),
                expected.len(),
                w.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// Runs `lablake replay` to its exit, with `env`, logging to `log`.
async fn replay(
    w: &World,
    args: &[&str],
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> anyhow::Result<std::process::ExitStatus> {
    let mut child = Reaped(w.spawn_instance(args, env, log)?);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        anyhow::ensure!(Instant::now() < deadline, "replay still running after 300 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn failpoint_fired(log: &std::path::Path, point: &str) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Ok(text.lines().filter(|l| l.contains("failpoint reached") && l.contains(point)).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_tenant_is_replayed_into_a_new_generation_while_every_tenant_changes() -> anyhow::Result<()> {
    replayed_while_every_tenant_changes(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_tenant_is_replayed_into_a_new_generation_while_every_tenant_changes() -> anyhow::Result<()> {
    replayed_while_every_tenant_changes(Kind::Postgres).await
}

async fn replayed_while_every_tenant_changes(kind: Kind) -> anyhow::Result<()> {
    // The Snowflake sink runs too: it must follow the pointer.
    let sf_prefix = format!("LLR{}_", lablake_tests::rand_id(6).to_uppercase());
    let mut w = World::with_source(kind, 3, &[DDL], &snowflake::sink_config_at(&sf_prefix, &snowflake::url())).await?;
    for t in w.tenants.clone() {
        for chunk in (0..SEED).collect::<Vec<_>>().chunks(1000) {
            let values: Vec<String> =
                chunk.iter().map(|id| format!("({id}, 'K{}', {id}.5, NULL, 1)", id % 40)).collect();
            w.exec(&t, &[&format!("INSERT INTO results VALUES {}", values.join(", "))]).await?;
        }
    }
    w.start()?;
    let (stop, next_id) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(SEED)));
    let writer = start_writer(&w, stop.clone(), next_id.clone());
    let t0 = w.tenants[0].clone();
    let store = w.checkpoint_store().await?;
    // The first snapshot curated, and changes after it: ~8,000 records per
    // tenant, 20 batches per partition at the replay's batch size.
    let deadline = Instant::now() + Duration::from_secs(180);
    while state_in(&w, &t0, 0).await?.0.len() < SEED as usize || next_id.load(Ordering::Relaxed) < SEED + 120 * 40 {
        anyhow::ensure!(Instant::now() < deadline, "the first snapshot was not curated:\n{}", w.log_tail());
        w.assert_running()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Build, killed ≥ 10 times: at each crash window of the builder's
    // two-phase commit, and by SIGKILL at random moments. Small batches
    // (for the replay only) give it many commits to be killed between.
    // Beside the pipeline's log, so a failed run leaves it behind.
    let log = std::env::temp_dir().join(format!("lablake-test-{}-replay.log", w.id));
    let small = ("LABLAKE__CURATE__BATCH__MAX_ROWS", "400");
    let build = ["replay", "--tenant", t0.as_str(), "--no-cut-over", "--progress-secs", "1"];
    let mut kills = 0;
    for round in 0..12 {
        let windows = ["curate.after_begin@1", "curate.after_put@1", "curate.after_commit@2"];
        if round % 4 == 3 {
            let mut child = Reaped(w.spawn_instance(&build, &[small], &log)?);
            tokio::time::sleep(Duration::from_millis(rand::rng().random_range(150..600))).await;
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "the replay ended ({status}) before it was killed (round {round}):\n{}",
                    std::fs::read_to_string(&log)?
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        } else {
            let point = windows[round % 4 % 3];
            let before = failpoint_fired(&log, point.split('@').next().unwrap_or(point))?;
            let status = replay(&w, &build, &[small, ("LABLAKE_FAILPOINTS", point)], &log).await?;
            anyhow::ensure!(!status.success(), "round {round}: the replay finished before {point} fired");
            let after = failpoint_fired(&log, point.split('@').next().unwrap_or(point))?;
            anyhow::ensure!(
                after > before,
                "round {round}: the replay exited without {point}:\n{}",
                std::fs::read_to_string(&log)?
            );
        }
        kills += 1;
        let g = store.load_generations(&t0).await?;
        anyhow::ensure!(g.active == 0 && g.pending().map(|p| p.generation) == Some(1), "after kill {kills}: {g:?}");
    }
    // The build to its end and the verification gate.
    let out = w.run_cli(&["replay", "--tenant", &t0, "--no-cut-over"])?;
    anyhow::ensure!(out.status.success(), "replay: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(out.stdout.rsplit(|b| *b == b'\n').find(|l| !l.is_empty()).unwrap_or_default())
            .with_context(|| format!("replay's report: {}", String::from_utf8_lossy(&out.stdout)))?;
    let tables = report["tables"].as_array().context("tables in the report")?;
    anyhow::ensure!(tables.len() == 1, "{report}");
    anyhow::ensure!(tables[0]["active"] == tables[0]["rebuilt"], "the rebuilt generation differs: {report}");
    anyhow::ensure!(tables[0]["rebuilt"]["rows"].as_u64().unwrap_or(0) >= SEED, "{report}");
    let g = store.load_generations(&t0).await?;
    anyhow::ensure!(g.record(1).map(|r| r.state) == Some(GenerationState::Verified), "{g:?}");

    // A reader follows the active generation through the cut-over: it always
    // reads one generation, complete (every seed row there).
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (reading, lake, tenant) = (reading.clone(), w.lake()?, t0.clone());
        let store = w.checkpoint_store().await?;
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            while reading.load(Ordering::Relaxed) {
                let g = store.load_generations(&tenant).await?.active;
                let rows = curated_rows_of_generation(&lake, &tenant, &format!("lab_{tenant}"), "results", g).await?;
                let state = curated_state(rows, "id");
                let seeded = (0..SEED).filter(|id| state.contains_key(&id.to_string())).count() as u64;
                anyhow::ensure!(seeded == SEED, "generation {g} read with {seeded} of {SEED} seed rows");
                seen.insert(g);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(seen)
        })
    };
    // The cut-over killed 5 times: 4 times before its write (the generation
    // stays verified, gen 0 active), once after it (gen 1 active).
    let cut = ["replay", "--tenant", t0.as_str(), "--progress-secs", "1"];
    for (i, point) in ["replay.before_cutover"; 4].into_iter().chain(["replay.after_cutover"]).enumerate() {
        let status = replay(&w, &cut, &[("LABLAKE_FAILPOINTS", &format!("{point}@1"))], &log).await?;
        anyhow::ensure!(!status.success(), "cut-over {i}: {point} did not abort the replay");
        let g = store.load_generations(&t0).await?;
        let want = if point == "replay.after_cutover" { 1 } else { 0 };
        anyhow::ensure!(g.active == want, "after {point}: active {} (want {want}): {g:?}", g.active);
    }
    // The live pipeline follows the pointer; killed once right after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.assert_running()?;
    w.kill();
    w.start()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The old generation's checkpoints no longer move (read again at the end).
    let topic = format!("{}.{t0}.lab_{t0}.results", w.prefix);
    let offsets = |group: String| {
        let (store, topic) = (&store, topic.clone());
        async move {
            let mut out = Vec::new();
            for p in 0..2 {
                let cp = store.load_partition(&PartitionRef::new(&group, &topic, p)).await?;
                out.push(cp.map_or(0, |c| c.next_offset));
            }
            anyhow::Ok(out)
        }
    };
    let old_at_cut = offsets(format!("g{}", w.id)).await?;
    let new_at_cut = offsets(format!("g{}-g1", w.id)).await?;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    await_exact_in_active(&mut w, Duration::from_secs(180)).await?;
    reading.store(false, Ordering::Relaxed);
    let seen = reader.await??;
    anyhow::ensure!(
        offsets(format!("g{}", w.id)).await? == old_at_cut,
        "generation 0 of {t0} still curated after the cut-over"
    );
    let new_now = offsets(format!("g{}-g1", w.id)).await?;
    anyhow::ensure!(
        new_now.iter().zip(&new_at_cut).all(|(a, b)| a > b),
        "generation 1 of {t0} not curated on by the live pipeline: {new_at_cut:?} → {new_now:?}"
    );
    anyhow::ensure!(seen.contains(&0) && seen.contains(&1), "the reader saw generations {seen:?}");
    for t in &w.tenants[1..] {
        let g = store.load_generations(t).await?;
        anyhow::ensure!(g.active == 0 && g.records.is_empty(), "{t} was touched: {g:?}");
    }
    let g = store.load_generations(&t0).await?;
    anyhow::ensure!(g.active == 1 && g.previous == Some(0), "{g:?}");
    // Snowflake: the replayed tenant loaded from generation 1, the others on from 0.
    snowflake::await_exact(&mut w, &sf_prefix, "results", COLS, Duration::from_secs(180)).await?;
    anyhow::ensure!(g.record(1).is_some_and(|r| !r.code_version.is_empty() && !r.config_hash.is_empty()), "{g:?}");

    // Rollback: generation 0 active again, curated on from its checkpoints.
    let out = w.run_cli(&["replay", "--tenant", &t0, "--rollback"])?;
    anyhow::ensure!(out.status.success(), "rollback: {}", String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(store.load_generations(&t0).await?.active == 0);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(&w, stop.clone(), next_id.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    await_exact_in_active(&mut w, Duration::from_secs(180)).await?;
    w.assert_running()?;
    let _ = w.stop();
    Ok(())
}
