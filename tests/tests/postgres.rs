//! PostgreSQL → Kafka → curated Parquet, end to end against the local
//! services (`lablake run` as a child process).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use lablake_tests::{World, pg_client, pg_source_rows};
use rand::Rng;

const RESULTS_DDL: &str = "CREATE TABLE results (id bigint PRIMARY KEY, value numeric(12,3), note text, \
                           resulted timestamptz, abnormal boolean, tags text[])";

const RESULTS_COLUMNS: &[(&str, &str)] = &[
    ("id", "id"),
    ("value", "value"),
    ("note", "note"),
    ("resulted", "to_char(resulted AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"),
    ("abnormal", "abnormal"),
    ("tags", "array_to_json(tags)"),
];

/// Waits until each tenant's curated state equals its source table.
async fn assert_lake_equals_source(w: &mut World) -> anyhow::Result<()> {
    let client = pg_client().await?;
    for t in w.tenants.clone() {
        let expected = pg_source_rows(&client, &t, "results", RESULTS_COLUMNS).await?;
        let mut last = BTreeMap::new();
        let mut ok = false;
        for _ in 0..240 {
            w.assert_running()?;
            let got = w.curated_state(&t, "results", "id").await?;
            if got == expected {
                ok = true;
                break;
            }
            last = got;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            ok,
            "tenant {t}: source has {} rows, lake state {} rows; first difference: {:?} vs {:?}\nlog:\n{}",
            expected.len(),
            last.len(),
            expected.iter().find(|(k, v)| last.get(*k) != Some(*v)),
            expected.iter().find(|(k, v)| last.get(*k) != Some(*v)).and_then(|(k, _)| last.get(k)),
            w.log_tail()
        );
    }
    Ok(())
}

/// Inserts, updates and deletes across three tenants while the process is
/// killed with SIGKILL and restarted several times: the curated lake equals
/// the source, nothing lost, nothing extra.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_during_100k_changes_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut w = World::new_postgres(3, &[RESULTS_DDL], "").await?;
    w.start()?;
    let tenants = w.tenants.clone();
    let writer = tokio::spawn(async move {
        let c = pg_client().await?;
        let mut changes = 0usize;
        for round in 0..10i64 {
            for t in &tenants {
                let base = round * 2500;
                c.batch_execute(&format!(
                    "INSERT INTO lab_{t}.results
                       SELECT g, (g % 1000) + (g % 997) / 1000.0, 'result ' || g || ' ✓',
                              timestamptz '2026-11-27 00:00:00+00' + g * interval '1.000001 second',
                              g % 10 = 0, ARRAY['a' || g, NULL]
                       FROM generate_series({base}, {base} + 2499) g"
                ))
                .await?;
                changes += 2500;
                let n = c
                    .execute(
                        &format!(
                            "UPDATE lab_{t}.results SET value = value + 1, note = NULL
                             WHERE id >= $1 AND id < $1 + 2500 AND id % 3 = 0"
                        ),
                        &[&base],
                    )
                    .await?;
                changes += n as usize;
                let n = c
                    .execute(
                        &format!("DELETE FROM lab_{t}.results WHERE id >= $1 AND id < $1 + 2500 AND id % 7 = 0"),
                        &[&base],
                    )
                    .await?;
                changes += n as usize;
            }
        }
        anyhow::Ok(changes)
    });
    let mut rng = rand::rng();
    let mut kills = 0;
    while !writer.is_finished() || kills < 4 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..3000))).await;
        w.assert_running()?;
        w.kill();
        kills += 1;
        w.start()?;
        if kills >= 8 {
            break;
        }
    }
    let changes = writer.await??;
    assert!(changes >= 100_000, "only {changes} changes");
    assert_lake_equals_source(&mut w).await?;
    let _ = w.stop();
    Ok(())
}
