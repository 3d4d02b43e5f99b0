//! Kafka keeps the full history by default (it is what replay rebuilds the
//! curated data from): topics Lablake creates get `retention.ms = -1`,
//! `retention.bytes = -1` and no compaction, and an existing topic whose
//! settings delete history is named in a warning at start.

use std::time::Duration;

use lablake_tests::{World, kafka_brokers};
use mysql_async::prelude::Queryable;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

const DDL: &[&str] = &[
    "CREATE TABLE orders (id INT NOT NULL PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
    "CREATE TABLE notes (id INT NOT NULL PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
];

async fn topic_config(admin: &AdminClient<DefaultClientContext>, topic: &str, name: &str) -> anyhow::Result<String> {
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let described = admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts).await?;
    let resource = described.into_iter().next().expect("one resource").map_err(|e| anyhow::anyhow!("{e}"))?;
    let entry = resource.entries.into_iter().find(|e| e.name == name);
    Ok(entry.and_then(|e| e.value).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_topics_keep_the_full_history_and_short_retention_is_named() -> anyhow::Result<()> {
    let mut w = World::new(1, DDL, "").await?;
    let t = w.tenants[0].clone();
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    // A topic made by hand with a week of retention, before Lablake starts.
    let short = format!("{}.{t}.lab_{t}.orders", w.prefix);
    let topic = NewTopic::new(&short, 2, TopicReplication::Fixed(1)).set("retention.ms", "604800000");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics([&topic], &opts).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    w.start()?;
    let mut c = w.pool.get_conn().await?;
    c.query_drop(format!("INSERT INTO lab_{t}.orders VALUES (1, 'a')")).await?;
    c.query_drop(format!("INSERT INTO lab_{t}.notes VALUES (1, 'a')")).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while w.curated_rows(&t, "notes").await?.is_empty() {
        w.assert_running()?;
        anyhow::ensure!(std::time::Instant::now() < deadline, "notes not curated:\n{}", w.log_tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The topic Lablake created keeps everything.
    let created = format!("{}.{t}.lab_{t}.notes", w.prefix);
    assert_eq!(topic_config(&admin, &created, "retention.ms").await?, "-1");
    assert_eq!(topic_config(&admin, &created, "retention.bytes").await?, "-1");
    // The broker's default policy (`delete` on Kafka and Redpanda; tansu
    // reports none): never compaction.
    let policy = topic_config(&admin, &created, "cleanup.policy").await?;
    assert!(!policy.contains("compact"), "cleanup.policy = {policy}");
    // The hand-made one is named at start, with what is wrong and the fix.
    let log = std::fs::read_to_string(&w.log_path)?;
    let warning = log.lines().find(|l| l.contains("topic deletes history") && l.contains(&short));
    assert!(
        warning.is_some_and(|l| l.contains("retention.ms = 604800000") && l.contains("retention.ms=-1")),
        "a warning names {short}:\n{}",
        w.log_tail()
    );
    assert!(!log.lines().any(|l| l.contains("topic deletes history") && l.contains(&created)));
    let _ = w.stop();
    Ok(())
}
