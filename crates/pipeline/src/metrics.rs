//! Prometheus metrics (names `lablake_<stage>_<name>_<unit>`), served at
//! `GET /metrics` on `metrics.listen`.

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = REGISTRY.register(Box::new(g.clone()));
    g
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = REGISTRY.register(Box::new(h.clone()));
    h
}

pub static SOURCE_RECORDS: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter("lablake_source_records_total", "Row changes produced to Kafka", &["source"]));
pub static SOURCE_DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "lablake_source_dead_letters_total",
        "Row changes dead-lettered by the source (tenant unresolved, or too large for Kafka)",
        &["source"],
    )
});
pub static SNAPSHOT_ROWS: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge(
        "lablake_snapshot_rows",
        "Rows delivered by the table's current snapshot",
        &["source", "tenant", "database", "table"],
    )
});
pub static SNAPSHOT_ESTIMATE: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge(
        "lablake_snapshot_estimated_rows",
        "The source's row estimate when the snapshot started",
        &["source", "tenant", "database", "table"],
    )
});
pub static SNAPSHOT_DONE: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge("lablake_snapshot_done", "1 when the table's snapshot finished", &["source", "tenant", "database", "table"])
});
pub static SINK_BATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter("lablake_sink_batches_total", "Curated batches loaded into Snowflake", &["tenant", "table"])
});
pub static SINK_LOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "lablake_sink_loads_total",
        "Loads (one COPY and one MERGE over one or more batches) into Snowflake",
        &["tenant", "table"],
    )
});
pub static SINK_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter("lablake_sink_rows_total", "Rows inserted, updated or deleted in Snowflake", &["tenant", "table"])
});
pub static SINK_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge("lablake_sink_lag_seconds", "Now minus the newest source commit loaded into Snowflake", &["tenant", "table"])
});
pub static SINK_FAILURES: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    let c = prometheus::IntCounter::new("lablake_sink_failures_total", "Failed Snowflake load passes (retried)")
        .unwrap_or_else(|e| panic!("metric: {e}"));
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
});
pub static TABLES_RETIRED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter("lablake_tables_retired_total", "Tables that disappeared from a source (dropped)", &["source", "lane"])
});
pub static STAGE_RESTARTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter("lablake_stage_restarts_total", "Stages started again in-process after a retryable failure", &["stage"])
});
pub static SOURCE_LAG: LazyLock<GaugeVec> =
    LazyLock::new(|| gauge("lablake_source_lag_seconds", "Now minus commit time of the last change read", &["source"]));
pub static SOURCE_CHECKPOINT_AGE: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge("lablake_source_checkpoint_timestamp_seconds", "Unix time of the last source checkpoint", &["source"])
});
pub static CURATE_RECORDS: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter("lablake_curate_records_total", "Kafka records consumed", &["tenant"]));
pub static CURATE_DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter("lablake_curate_dead_letters_total", "Records sent to the dead-letter topic", &["tenant"])
});
pub static CURATE_REDELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "lablake_curate_redeliveries_dropped_total",
        "Records a source delivered again after a restart (same position and key), dropped by curation",
        &["tenant"],
    )
});
pub static CURATE_PARTITION_STOPPED: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge(
        "lablake_curate_partition_stopped",
        "1 when a partition stopped because its log no longer holds what the checkpoint says (gap, reset)",
        &["tenant", "topic", "partition"],
    )
});
pub static STANDBY: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge(
        "lablake_standby",
        "1 while this instance waits as a standby for the lease another instance holds",
        &["lease"],
    )
});
pub static CURATE_PARTITION_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "lablake_curate_partition_retries_total",
        "Partitions held back after a retryable batch failure and read again from their checkpoint",
        &["tenant"],
    )
});
pub static CURATE_PARTITIONS_OWNED: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge("lablake_curate_partitions_owned", "Partitions this instance curates, per consumer group", &["group"])
});
pub static CURATE_PARTITIONS_LOST: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "lablake_curate_partitions_lost_total",
        "Partitions whose write was fenced because another member of the group took them over",
        &["group"],
    )
});
pub static CURATE_UNCHANGED_FILES_READ: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "lablake_curate_unchanged_files_read_total",
        "Earlier curated files read to fill in unchanged (TOAST) values",
        &["tenant"],
    )
});
pub static CURATE_BATCHES: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter("lablake_curate_batches_total", "Curated batches committed", &["tenant", "reason"]));
pub static CURATE_BATCH_ROWS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "lablake_curate_batch_rows",
        "Rows per curated batch",
        &["tenant"],
        vec![1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6],
    )
});
pub static CURATE_BATCH_BYTES: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "lablake_curate_batch_bytes",
        "Parquet bytes per curated batch",
        &["tenant"],
        vec![1e3, 1e4, 1e5, 1e6, 1e7, 1e8],
    )
});
pub static REPLAY_RECORDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge(
        "lablake_replay_records",
        "Records of a tenant's topics a running replay has curated into its new generation",
        &["tenant"],
    )
});

pub static CURATE_DISCOVERY_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "lablake_curate_discovery_failures_total",
        "Topic discoveries that failed (the broker unreachable or slow) and were tried again at the next interval",
        &["group"],
    )
});
pub static CURATE_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge("lablake_curate_lag_seconds", "Now minus newest commit time in the last committed batch", &["tenant"])
});
pub static CURATE_COMMITTED_TS: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge(
        "lablake_curate_committed_timestamp_seconds",
        "Unix time of the tenant's last committed curated batch (with lablake_curate_lag_seconds: how fresh the lake is)",
        &["tenant"],
    )
});
pub static CURATE_CHECKPOINT_TS: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge(
        "lablake_curate_checkpoint_timestamp_seconds",
        "Unix time of the last offset checkpoint (seconds since = time() - this)",
        &["group"],
    )
});

pub use lablake_model::now_ms;

/// Unix time in seconds, as f64.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The text exposition of all metrics.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Serves `GET /metrics` until the task is dropped; fails only when `addr`
/// cannot be bound.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    loop {
        // An accept error (out of file descriptors, a connection aborted
        // before it was taken) ends only that connection, never the endpoint.
        let mut sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed, trying again in 100 ms");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            // A client that connects and says nothing is dropped after 5 s.
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut req)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let ok = req[..n].starts_with(b"GET /metrics");
            let (status, body) = if ok { ("200 OK", render()) } else { ("404 Not Found", String::new()) };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
