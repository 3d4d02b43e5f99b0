//! The conformance suite against DynamoDB (moto or DynamoDB Local in
//! development and CI) at `LABLAKE_DYNAMODB_ENDPOINT`, default
//! `http://127.0.0.1:25000`. Credentials: `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY`, default `test`; region `AWS_REGION`, default
//! `us-east-1`. The services are started by the test command, so an
//! unreachable endpoint fails these tests; they never skip.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use lablake_checkpoint::prelude::*;
use lablake_checkpoint::{CheckpointError, DynamoConfig, DynamoStore, LeaseName, SourceCheckpoint, conformance};
use lablake_model::Resume;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

fn endpoint() -> String {
    env_or("LABLAKE_DYNAMODB_ENDPOINT", "http://127.0.0.1:25000")
}

/// Explicit credentials and region, so the test needs no process environment.
async fn sdk_config() -> SdkConfig {
    let credentials = Credentials::new(
        env_or("AWS_ACCESS_KEY_ID", "test"),
        env_or("AWS_SECRET_ACCESS_KEY", "test"),
        std::env::var("AWS_SESSION_TOKEN").ok(),
        None,
        "lablake-checkpoint-test",
    );
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(env_or("AWS_REGION", "us-east-1")))
        .credentials_provider(credentials)
        .load()
        .await
}

fn config(table: &str) -> DynamoConfig {
    DynamoConfig { table: table.to_owned(), endpoint: Some(endpoint()), region: None, create_table: true }
}

fn unique_table() -> String {
    format!("lablake_ckpt_test_{}", conformance::unique_prefix())
}

/// A raw client on the same endpoint, to write items as other versions did.
fn raw_client(sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(aws_sdk_dynamodb::config::Builder::from(sdk).endpoint_url(endpoint()).build())
}

async fn delete_table(sdk: &SdkConfig, table: &str) {
    raw_client(sdk).delete_table().table_name(table).send().await.expect("delete the test table");
}

#[tokio::test]
async fn dynamo_store_passes_conformance() {
    let sdk = sdk_config().await;
    let table = unique_table();
    let store = DynamoStore::connect_with(&sdk, &config(&table))
        .await
        .unwrap_or_else(|e| panic!("DynamoDB at {} must be reachable (the test command starts it): {e}", endpoint()));
    assert_eq!(store.table(), table);
    // A plain `moto_server` does not isolate transactions and fails the races;
    // start it through dev/moto_server_serialized.py (started by dev/services).
    conformance::run_all(&store).await;
    // A second run on the same table: unique prefixes keep runs apart. (Not
    // concurrently: moto's TransactWriteItems rolls a cancelled transaction
    // back by restoring a snapshot of the whole table, which undoes writes
    // other requests made meanwhile. DynamoDB isolates transactions.)
    conformance::run_all(&store).await;
    delete_table(&sdk, &table).await;
}

#[tokio::test]
async fn connect_creates_the_table_once_and_honours_create_table() {
    let sdk = sdk_config().await;
    let table = unique_table();

    let missing = DynamoConfig { create_table: false, ..config(&table) };
    match DynamoStore::connect_with(&sdk, &missing).await {
        Err(CheckpointError::Config { key, .. }) => assert_eq!(key, "table"),
        other => panic!("connecting to a missing table without create_table: expected a config error, got {other:?}"),
    }

    let first = DynamoStore::connect_with(&sdk, &config(&table)).await.expect("create the table");
    let lease = LeaseName::source("l");
    assert_eq!(first.acquire_lease(&lease).await.expect("lease"), 1);
    // Existing table: no error, data kept; also without create_table.
    let second = DynamoStore::connect_with(&sdk, &missing).await.expect("connect to the existing table");
    assert_eq!(second.acquire_lease(&lease).await.expect("lease"), 2);
    delete_table(&sdk, &table).await;
}

#[tokio::test]
async fn backend_errors_are_retryable_and_name_the_item() {
    let sdk = sdk_config().await;
    let table = unique_table();
    let store = DynamoStore::connect_with(&sdk, &config(&table)).await.expect("connect");
    delete_table(&sdk, &table).await;
    // The table is gone: a backend failure, not a fence.
    let err = store.load_source("gone").await.expect_err("reading from a deleted table");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("source checkpoint `gone`"), "{err}");
}

/// Races only, many times: a backend that does not isolate transactions
/// (plain `moto_server`) fails this quickly.
#[tokio::test]
async fn racing_writers_stress() {
    let sdk = sdk_config().await;
    let table = unique_table();
    let store = DynamoStore::connect_with(&sdk, &config(&table)).await.expect("connect");
    let prefix = conformance::unique_prefix();
    for i in 0..20 {
        conformance::batches::racing_writers_with_one_generation(&store, &format!("{prefix}-{i}")).await;
    }
    delete_table(&sdk, &table).await;
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Items as the previous version wrote them (no `fmt`, no `resume_kind`) read
/// as they did; items of a newer format are refused, and a newer lease or
/// status row is not updated.
#[tokio::test]
async fn items_of_other_formats() {
    let sdk = sdk_config().await;
    let table = unique_table();
    let store = DynamoStore::connect_with(&sdk, &config(&table)).await.expect("connect");
    let raw = raw_client(&sdk);
    let put = |pk: &str, sk: &str, attrs: Vec<(&str, AttributeValue)>| {
        let mut req = raw.put_item().table_name(&table).item("pk", s(pk)).item("sk", s(sk));
        for (k, v) in attrs {
            req = req.item(k, v);
        }
        req.send()
    };
    let legacy_source = |file: &str, pos: u64, gtid: Option<&str>| {
        let mut attrs = vec![
            ("kind", s("source")),
            ("file", s(file)),
            ("pos", n(pos)),
            ("position", s("0000000001:0000000004")),
            ("commit_ts_ms", n(17)),
            ("generation", n(1)),
            ("updated_at_ms", n(1)),
        ];
        if let Some(g) = gtid {
            attrs.push(("gtid", s(g)));
        }
        attrs
    };

    // Previous version, PostgreSQL: empty file, the LSN as pos.
    put("source#pg", "checkpoint", legacy_source("", 0x1_6B37_4D48, None)).await.expect("put legacy pg item");
    let cp = store.load_source("pg").await.expect("load legacy pg").expect("present");
    assert_eq!(
        cp,
        SourceCheckpoint {
            resume: Resume::Lsn(0x1_6B37_4D48),
            position: "0000000001:0000000004".into(),
            commit_ts_ms: 17
        }
    );
    // Previous version, MySQL.
    put("source#my", "checkpoint", legacy_source("binlog.000003", 154, Some("0-1-9"))).await.expect("put legacy");
    let cp = store.load_source("my").await.expect("load legacy mysql").expect("present");
    assert_eq!(cp.resume, Resume::Binlog { file: "binlog.000003".into(), pos: 154, gtid: Some("0-1-9".into()) });
    // The new holder saves over it in the current format.
    let g = store.acquire_lease(&LeaseName::source("pg")).await.expect("lease");
    let saved = SourceCheckpoint { resume: Resume::Lsn(0x1_6B37_5000), ..cp.clone() };
    store.save_source("pg", g, &saved).await.expect("save");
    assert_eq!(store.load_source("pg").await.expect("load").as_ref(), Some(&saved));
    let item = raw
        .get_item()
        .table_name(&table)
        .key("pk", s("source#pg"))
        .key("sk", s("checkpoint"))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("present");
    assert_eq!((item.get("fmt"), item.get("resume_kind")), (Some(&n(1)), Some(&s("lsn"))));
    assert_eq!(
        (item.get("file"), item.get("pos")),
        (Some(&s("")), Some(&n(0x1_6B37_5000u64))),
        "format-0 attributes kept"
    );

    // A newer format is refused, naming the item.
    let mut newer = legacy_source("binlog.000003", 154, None);
    newer.push(("fmt", n(2)));
    put("source#future", "checkpoint", newer).await.expect("put newer item");
    match store.load_source("future").await {
        Err(CheckpointError::Corrupt(m)) => {
            assert!(m.contains("source checkpoint `future`") && m.contains("newer Lablake"), "{m}")
        }
        other => panic!("reading an item of a newer format: expected Corrupt, got {other:?}"),
    }
    // A lease of a newer format is not bumped by this version.
    put("lease#source#future", "lease", vec![("kind", s("lease")), ("generation", n(7)), ("fmt", n(2))])
        .await
        .expect("put newer lease");
    match store.acquire_lease(&LeaseName::source("future")).await {
        Err(CheckpointError::Corrupt(m)) => assert!(m.contains("newer Lablake"), "{m}"),
        other => panic!("acquiring a lease of a newer format: expected Corrupt, got {other:?}"),
    }
    let lease = raw
        .get_item()
        .table_name(&table)
        .key("pk", s("lease#source#future"))
        .key("sk", s("lease"))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("present");
    assert_eq!(lease.get("generation"), Some(&n(7)), "the newer lease must be left alone");
    // A legacy lease (no `fmt`) is acquired as before.
    put("lease#source#old", "lease", vec![("kind", s("lease")), ("generation", n(7)), ("name", s("source#old"))])
        .await
        .expect("put legacy lease");
    assert_eq!(store.acquire_lease(&LeaseName::source("old")).await.expect("legacy lease"), 8);
    delete_table(&sdk, &table).await;
}
