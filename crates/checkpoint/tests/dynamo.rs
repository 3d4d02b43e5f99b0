//! The conformance suite against DynamoDB (moto or DynamoDB Local in
//! development and CI) at `LABLAKE_DYNAMODB_ENDPOINT`, default
//! `http://127.0.0.1:25000`. Credentials: `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY`, default `test`; region `AWS_REGION`, default
//! `us-east-1`. The services are started by the test command, so an
//! unreachable endpoint fails these tests; they never skip.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, Region};
use lablake_checkpoint::{CheckpointError, CheckpointStore, DynamoConfig, DynamoStore, conformance};

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

async fn delete_table(sdk: &SdkConfig, table: &str) {
    let conf = aws_sdk_dynamodb::config::Builder::from(sdk).endpoint_url(endpoint()).build();
    aws_sdk_dynamodb::Client::from_conf(conf)
        .delete_table()
        .table_name(table)
        .send()
        .await
        .expect("delete the test table");
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
    assert_eq!(first.acquire_lease("l").await.expect("lease"), 1);
    // Existing table: no error, data kept; also without create_table.
    let second = DynamoStore::connect_with(&sdk, &missing).await.expect("connect to the existing table");
    assert_eq!(second.acquire_lease("l").await.expect("lease"), 2);
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
        conformance::racing_writers_with_one_generation(&store, &format!("{prefix}-{i}")).await;
    }
    delete_table(&sdk, &table).await;
}
