//! The acknowledgement contract against a real Kafka-API broker
//! (`LABLAKE_KAFKA_BROKERS`, default 127.0.0.1:29092): a marker comes out only
//! after every record sent before it was acknowledged, and never after a
//! failed delivery.

use std::sync::Arc;

use lablake_bus::{BusConfig, BusError, ChangeProducer, ack_queue};
use rand::Rng;

fn config() -> BusConfig {
    let mut c = BusConfig::new(std::env::var("LABLAKE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:29092".into()));
    c.partitions = 1;
    c
}

fn topic() -> String {
    format!("acktest.{}", rand::rng().random_range(0..u64::MAX))
}

#[tokio::test]
async fn markers_follow_every_earlier_acknowledgement() {
    let mut p = ChangeProducer::new(&config()).expect("producer");
    let t = topic();
    p.ensure_topic(&t).await.expect("topic");
    let (tx, mut rx) = ack_queue::<u32>(64);
    let name: Arc<str> = t.as_str().into();
    let sender = tokio::spawn(async move {
        for batch in 0..10u32 {
            for i in 0..100 {
                let fut = p.send_raw(&t, None, b"k", format!("{batch}-{i}").as_bytes()).await.expect("send");
                tx.delivery(name.clone(), fut).await.expect("queue");
            }
            tx.marker(batch).await.expect("marker");
        }
        // Handed back, not dropped: dropping a producer purges what is still
        // in flight, which would fail the deliveries this test waits for.
        p
    });
    for batch in 0..10u32 {
        let m = rx.next().await.expect("no delivery error");
        assert_eq!(m, Some(batch));
        assert_eq!(rx.acked(), u64::from(batch + 1) * 100, "marker {batch} before its records were acked");
    }
    let producer = sender.await.expect("sender");
    assert_eq!(rx.next().await.expect("closed cleanly"), None);
    drop(producer);
}

#[tokio::test]
async fn a_failed_delivery_stops_every_later_marker() {
    let mut p = ChangeProducer::new(&config()).expect("producer");
    let t = topic();
    p.ensure_topic(&t).await.expect("topic");
    let (tx, mut rx) = ack_queue::<u32>(64);
    let name: Arc<str> = t.as_str().into();
    let ok = p.send_raw(&t, None, b"k", b"fine").await.expect("send");
    tx.delivery(name.clone(), ok).await.expect("queue");
    tx.marker(1).await.expect("marker");
    // Partition 7 does not exist in a one-partition topic: the delivery fails.
    // librdkafka fails it either later (the future) or at once, when it has
    // the topic's metadata already (seen once in CI); at once, there is no
    // future to queue and the caller stops there, so only the first marker
    // may come out.
    let bad = match p.send_raw(&t, Some(7), b"k", b"lost").await {
        Ok(bad) => bad,
        Err(BusError::Delivery { topic, .. }) => {
            assert_eq!(topic, t);
            drop(tx);
            assert_eq!(rx.next().await.expect("first marker"), Some(1));
            return;
        }
        Err(other) => panic!("enqueue: {other:?}"),
    };
    tx.delivery(name.clone(), bad).await.expect("queue");
    tx.marker(2).await.expect("marker");
    drop(tx);
    assert_eq!(rx.next().await.expect("first marker"), Some(1));
    match rx.next().await {
        Err(BusError::Delivery { topic, .. }) => assert_eq!(topic, t),
        other => panic!("marker 2 must not come out after a failed delivery: {other:?}"),
    }
}
