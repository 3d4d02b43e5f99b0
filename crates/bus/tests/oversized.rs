//! Oversized changes against a real Kafka-API broker (`LABLAKE_KAFKA_BROKERS`,
//! default 127.0.0.1:29092): a change too large for `kafka.max_message_bytes`
//! never fails the producer; a dead letter describing it goes to its tenant's
//! dead-letter topic and is acknowledged like any record, in order.

use std::time::Duration;

use lablake_bus::{BusConfig, ChangeConsumer, ChangeProducer, ack_queue, header};
use lablake_model::{ChangeEvent, Column, ColumnType, Op, SourceInfo, SourcePosition, TableId, TableSchema, Value};
use rand::Rng;

fn config() -> BusConfig {
    let mut c = BusConfig::new(std::env::var("LABLAKE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:29092".into()));
    c.partitions = 1;
    c.topic_prefix = format!("oversized{}", rand::rng().random_range(0..u64::MAX));
    c
}

fn report(id: i64, pdf: usize, row: u32) -> ChangeEvent {
    report_keyed_by(id, pdf, row, vec![0])
}

/// A report; `key` indexes the key columns (a table without a primary key
/// is keyed by every column).
fn report_keyed_by(id: i64, pdf: usize, row: u32, key: Vec<usize>) -> ChangeEvent {
    let schema = TableSchema::new(
        vec![
            Column { name: "id".into(), ty: ColumnType::Int { bytes: 8, unsigned: false }, nullable: false },
            Column { name: "pdf".into(), ty: ColumnType::Bytes, nullable: true },
        ],
        key,
    );
    ChangeEvent {
        table: TableId::new("acme", "lab_acme", "reports"),
        op: Op::Create,
        schema,
        before: None,
        after: Some(vec![Value::Int(id), Value::Bytes(vec![0x25; pdf])]),
        source: SourceInfo {
            connector: "mysql".into(),
            name: "main".into(),
            server_id: 1,
            file: "binlog.000001".into(),
            pos: 4000,
            row,
            gtid: None,
            ts_ms: 1_700_000_000_000,
            position: SourcePosition::mysql(1, 4000, row),
        },
        ts_ms: 1_700_000_000_001,
    }
}

#[tokio::test]
async fn an_oversized_change_becomes_an_acknowledged_dead_letter() {
    let cfg = config();
    let mut p = ChangeProducer::new(&cfg).expect("producer");
    let (tx, mut rx) = ack_queue::<u32>(16);
    let mut sent_to = Vec::new();
    for (i, (id, pdf)) in [(1, 10), (2, 900_000), (3, 10)].into_iter().enumerate() {
        let sent = p.send(&report(id, pdf, i as u32)).await.expect("an oversized change must not fail send");
        sent_to.push((sent.topic.to_string(), sent.oversized.clone()));
        tx.delivery(sent.topic, sent.delivery).await.expect("queue");
    }
    tx.marker(1).await.expect("marker");
    drop(tx);
    assert_eq!(rx.next().await.expect("every delivery acknowledged"), Some(1));
    assert_eq!(rx.acked(), 3);

    let change_topic = format!("{}.acme.lab_acme.reports", cfg.topic_prefix);
    let dlq = format!("{}-dlq.acme", cfg.topic_prefix);
    assert_eq!(sent_to[0], (change_topic.clone(), None));
    assert_eq!(sent_to[2], (change_topic.clone(), None));
    let o = sent_to[1].1.clone().expect("the 900 KB change is oversized");
    assert_eq!(sent_to[1].0, dlq);
    assert!(o.bytes > 1_000_000 && o.limit == 1_000_000 && !o.refused_by_client, "{o:?}");

    let mut c = ChangeConsumer::new(&cfg, "oversized-check").expect("consumer");
    c.assign(&dlq, 0, 0).expect("assign");
    let r = tokio::time::timeout(Duration::from_secs(30), c.recv()).await.expect("a dead letter").expect("recv");
    assert_eq!(r.key.as_deref(), Some(&b"{\"id\":2}"[..]));
    let h = |k: &str| r.headers.iter().find(|(n, _)| n == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    assert_eq!(h(header::STAGE).as_deref(), Some("source"));
    assert_eq!(h(header::ERROR), Some(o.reason()));
    let doc: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("json");
    assert_eq!(doc["table"], "acme/lab_acme.reports");
    assert_eq!(doc["topic"], change_topic.as_str());
    assert_eq!(doc["position"], SourcePosition::mysql(1, 4000, 1).as_str());
    assert_eq!(doc["bytes"], o.bytes);
    // The two small changes are on their topic, in order.
    let mut c = ChangeConsumer::new(&cfg, "oversized-check").expect("consumer");
    c.assign(&change_topic, 0, 0).expect("assign");
    for want in ["{\"id\":1}", "{\"id\":3}"] {
        let r = tokio::time::timeout(Duration::from_secs(30), c.recv()).await.expect("a change").expect("recv");
        assert_eq!(r.key.as_deref(), Some(want.as_bytes()));
    }
}

/// Without a primary key every column is the key, so the key itself is too
/// large: the dead letter goes without it and says so.
#[tokio::test]
async fn an_oversized_key_is_left_out_of_the_dead_letter() {
    let cfg = config();
    let mut p = ChangeProducer::new(&cfg).expect("producer");
    let sent = p.send(&report_keyed_by(9, 900_000, 0, vec![0, 1])).await.expect("send");
    assert!(sent.oversized.as_ref().is_some_and(|o| o.key_bytes > 1_000_000));
    let (tx, mut rx) = ack_queue::<u32>(4);
    tx.delivery(sent.topic, sent.delivery).await.expect("queue");
    tx.marker(1).await.expect("marker");
    assert_eq!(rx.next().await.expect("acknowledged"), Some(1));
    let mut c = ChangeConsumer::new(&cfg, "oversized-check").expect("consumer");
    c.assign(&format!("{}-dlq.acme", cfg.topic_prefix), 0, 0).expect("assign");
    let r = tokio::time::timeout(Duration::from_secs(30), c.recv()).await.expect("a dead letter").expect("recv");
    assert_eq!(r.key, None);
    let doc: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("json");
    assert_eq!(doc["key_in_record"], false);
    assert!(doc["key_bytes"].as_u64().is_some_and(|n| n > 1_000_000), "{doc}");
}
