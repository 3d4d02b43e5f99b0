//! The source stage: MySQL binlog → Kafka, checkpointing positions only after
//! Kafka acknowledged everything before them.

use std::time::{Duration, Instant};

use anyhow::Context;
use lablake_bus::{BusConfig, ChangeProducer, DeadLetter, ack_queue};
use lablake_checkpoint::{CheckpointStore, SourceCheckpoint};
use lablake_mysql::{MysqlSource, MysqlSourceConfig, ResumePoint, SourceItem};
use tokio::sync::watch;

use crate::metrics;

/// How often acknowledged positions are saved.
const SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// Runs one source until `shutdown` turns true or an error occurs. On
/// shutdown, every record already read is acknowledged and checkpointed.
pub async fn run_source<S: CheckpointStore + 'static>(
    name: &str,
    config: MysqlSourceConfig,
    bus: &BusConfig,
    store: std::sync::Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let lease = format!("source#{name}");
    let generation = store.acquire_lease(&lease).await.context("acquiring the source lease")?;
    let resume = store.load_source(name).await?.map(|c| ResumePoint { file: c.file, pos: c.pos, gtid: c.gtid });
    match &resume {
        Some(r) => {
            tracing::info!(source = name, file = %r.file, pos = r.pos, gtid = ?r.gtid, generation, "resuming source")
        }
        None => tracing::info!(source = name, generation, "starting source from its configured start position"),
    }
    let mut reader = MysqlSource::start(config, resume).await.with_context(|| format!("starting source `{name}`"))?;
    let mut producer = ChangeProducer::new(bus)?;
    let (acks, mut acked) = ack_queue::<SourceCheckpoint>(bus.max_in_flight);

    let saver = {
        let store = store.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut latest: Option<SourceCheckpoint> = None;
            let mut saved: Option<SourceCheckpoint> = None;
            let mut last_save = Instant::now();
            loop {
                let next = acked.next().await;
                let done = match next {
                    Ok(Some(cp)) => {
                        latest = Some(cp);
                        false
                    }
                    Ok(None) => true,
                    Err(e) => {
                        // Save what was acknowledged before the failure, then stop.
                        if let Some(cp) = latest.as_ref().filter(|c| Some(*c) != saved.as_ref()) {
                            store.save_source(&name, generation, cp).await?;
                        }
                        return Err(anyhow::Error::new(e).context("kafka delivery failed"));
                    }
                };
                if let Some(cp) = latest.as_ref()
                    && (done || last_save.elapsed() >= SAVE_INTERVAL)
                    && saved.as_ref() != Some(cp)
                {
                    store.save_source(&name, generation, cp).await.context("saving the source checkpoint")?;
                    metrics::SOURCE_CHECKPOINT_AGE.with_label_values(&[&name]).set(metrics::now_secs());
                    saved = Some(cp.clone());
                    last_save = Instant::now();
                }
                if done {
                    return anyhow::Ok(());
                }
            }
        })
    };

    let records = metrics::SOURCE_RECORDS.with_label_values(&[name]);
    let lag = metrics::SOURCE_LAG.with_label_values(&[name]);
    let mut last_position = String::new();
    let result: anyhow::Result<()> = async {
        loop {
            let item = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                item = reader.next() => item.with_context(|| format!("reading source `{name}`"))?,
            };
            match item {
                SourceItem::Change(event) => {
                    let (topic, fut) = producer.send(&event).await?;
                    acks.delivery(topic, fut).await?;
                    records.inc();
                    lag.set((metrics::now_secs() - event.source.ts_ms as f64 / 1000.0).max(0.0));
                    last_position = event.source.position.as_str().to_owned();
                }
                SourceItem::Commit { resume, position, commit_ts_ms } => {
                    acks.marker(SourceCheckpoint {
                        file: resume.file,
                        pos: resume.pos,
                        gtid: resume.gtid,
                        position: position.as_str().to_owned(),
                        commit_ts_ms,
                    })
                    .await?;
                }
                SourceItem::Heartbeat { resume } => {
                    acks.marker(SourceCheckpoint {
                        file: resume.file,
                        pos: resume.pos,
                        gtid: resume.gtid,
                        position: last_position.clone(),
                        commit_ts_ms: (metrics::now_secs() * 1000.0) as i64,
                    })
                    .await?;
                }
                SourceItem::Unresolved { table, reason, position } => {
                    tracing::warn!(
                        source = name,
                        table,
                        reason,
                        "row without a resolvable tenant sent to the dead-letter topic"
                    );
                    let payload = format!(
                        "{{\"table\":{},\"position\":\"{}\"}}",
                        serde_json::Value::String(table.clone()),
                        position
                    );
                    let (topic, fut) = producer
                        .send_dead_letter(DeadLetter {
                            tenant: "_unresolved",
                            key: None,
                            payload: Some(payload.as_bytes()),
                            reason: &reason,
                            stage: "source",
                            origin: None,
                        })
                        .await?;
                    acks.delivery(topic, fut).await?;
                    metrics::SOURCE_DEAD_LETTERS.with_label_values(&[name]).inc();
                }
                _ => anyhow::bail!("source `{name}` produced an item this version cannot handle"),
            }
        }
        Ok(())
    }
    .await;
    drop(acks);
    let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
    let saved = saver.await.context("checkpoint task panicked")?;
    result?;
    saved?;
    if let Ok(Err(e)) = flushed {
        return Err(e.into());
    }
    tracing::info!(source = name, "source stopped");
    Ok(())
}
