//! The operator's way out of a stopped partition: `lablake move-partition`
//! moves a curator's partition checkpoint forward past records that will
//! never be curated (after a log lost them; here they are skipped on
//! purpose), and the curator goes on from there. Forward only, fenced like
//! any writer.

use std::collections::BTreeSet;
use std::time::Duration;

use lablake_tests::{World, kafka_brokers};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};

const DDL: &str = "CREATE TABLE tasks (id BIGINT NOT NULL PRIMARY KEY, state VARCHAR(20))";
const COLS: &[&str] = &["id", "state"];

/// `(log end, ids of the records from offset 0)` of one partition.
fn partition_log(topic: &str, partition: i32) -> anyhow::Result<(i64, Vec<(i64, i64)>)> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("{topic}-log"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)?;
    c.assign(&tpl)?;
    let (mut end, mut ids) = (0, Vec::new());
    let mut last = std::time::Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        let Some(m) = c.poll(Duration::from_millis(200)) else { continue };
        let m = m?;
        last = std::time::Instant::now();
        end = m.offset() + 1;
        let key: serde_json::Value = serde_json::from_slice(m.key().unwrap_or(b"null"))?;
        if let Some(id) = key["id"].as_i64() {
            ids.push((m.offset(), id));
        }
    }
    Ok((end, ids))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moved_past_a_gap_is_curated_from_there() -> anyhow::Result<()> {
    let mut w = World::new(1, &[DDL], "").await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let rows: Vec<String> = (1..=20).map(|i| format!("({i}, 'open')")).collect();
    w.exec(&t, &[&format!("INSERT INTO tasks VALUES {}", rows.join(", "))]).await?;
    let expected = w.source_state(&t, "tasks", COLS).await?;
    w.await_curated_state(&t, "tasks", "id", &expected, Duration::from_secs(120)).await?;
    w.stop()?;

    // Changes reach Kafka while no curator runs.
    let mut source = w.spawn(&["source"])?;
    let rows: Vec<String> = (21..=40).map(|i| format!("({i}, 'open')")).collect();
    w.exec(&t, &[&format!("INSERT INTO tasks VALUES {}", rows.join(", "))]).await?;
    let topic = format!("{}.{t}.lab_{t}.tasks", w.prefix);
    let mut log = (0, Vec::new());
    for _ in 0..50 {
        log = partition_log(&topic, 0)?;
        if log.1.iter().any(|(_, id)| *id > 20) {
            break;
        }
    }
    let _ = source.kill();
    let _ = source.wait();
    let (end, ids) = log;
    let skipped: BTreeSet<i64> = ids.iter().filter(|(_, id)| *id > 20).map(|(_, id)| *id).collect();
    anyhow::ensure!(!skipped.is_empty(), "no new record in partition 0 of {topic}");

    // Backwards is refused; forward to the log end skips partition 0's new records.
    let back = w.run_cli(&["move-partition", "--topic", &topic, "--partition", "0", "--to", "1"])?;
    assert!(!back.status.success(), "moving backwards must fail");
    assert!(String::from_utf8_lossy(&back.stderr).contains("forward"), "{}", String::from_utf8_lossy(&back.stderr));
    let end_s = end.to_string();
    let out = w.run_cli(&["move-partition", "--topic", &topic, "--partition", "0", "--to", &end_s])?;
    anyhow::ensure!(out.status.success(), "move-partition failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("-> {end}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // From there on, everything is curated again; the skipped records never are.
    w.start()?;
    let rows: Vec<String> = (41..=60).map(|i| format!("({i}, 'late')")).collect();
    w.exec(&t, &[&format!("INSERT INTO tasks VALUES {}", rows.join(", "))]).await?;
    let mut expected = w.source_state(&t, "tasks", COLS).await?;
    expected.retain(|id, _| id.parse::<i64>().is_ok_and(|id| !skipped.contains(&id)));
    w.await_curated_state(&t, "tasks", "id", &expected, Duration::from_secs(120)).await?;
    let _ = w.stop();
    Ok(())
}
