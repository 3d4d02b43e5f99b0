//! The client against the local Snowflake emulator (fakesnow, started by
//! `dev/services up --with-snowflake`; `LABLAKE_SNOWFLAKE_URL`).

use std::time::{Duration, Instant};

use lablake_snowflake::{Binding, Client, SnowflakeConfig, SnowflakeError};

fn url() -> String {
    std::env::var("LABLAKE_SNOWFLAKE_URL").unwrap_or_else(|_| "http://127.0.0.1:28080".into())
}

fn config(base: &str) -> SnowflakeConfig {
    let mut c = SnowflakeConfig::new("lablaketest", "lablake");
    c.base_url = Some(base.to_owned());
    c.allow_http = true;
    c.password = Some("test".to_owned().into());
    c
}

fn unique(prefix: &str) -> String {
    let n: u64 = rand_u64();
    format!("{prefix}_{n:x}")
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

#[tokio::test]
async fn statements_bindings_and_both_result_formats() -> anyhow::Result<()> {
    let mut c = Client::new(config(&url()))?;
    c.login(None, None).await?;
    let db = unique("LLT");
    c.query(&format!("CREATE DATABASE {db}"), &[]).await?;
    c.query(&format!("CREATE SCHEMA {db}.S"), &[]).await?;
    c.query(&format!("CREATE TABLE {db}.S.T (ID NUMBER(10,0), NAME VARCHAR, AMOUNT NUMBER(12,2), DOC VARIANT)"), &[])
        .await?;
    let insert = format!("INSERT INTO {db}.S.T (ID, NAME, AMOUNT, DOC) SELECT ?, ?, ?, PARSE_JSON(?)");
    for (id, name) in [(1, Some("é x")), (2, None)] {
        let name = name.map_or(Binding::Null, |n| Binding::Text(n.into()));
        let r = c
            .query(
                &insert,
                &[Binding::Fixed(id), name, Binding::Text("12.50".into()), Binding::Text(r#"{"a":[1,2]}"#.into())],
            )
            .await?;
        // DML answers with a JSON rowset (number of rows inserted).
        assert_eq!(r.rows[0][0].as_deref(), Some("1"));
    }
    // Queries answer with Arrow; values read like JSON rowsets.
    let r = c.query(&format!("SELECT ID, NAME, AMOUNT, TO_VARCHAR(DOC) AS DOC FROM {db}.S.T ORDER BY ID"), &[]).await?;
    assert_eq!(r.rows.len(), 2);
    assert_eq!(r.get(0, "id"), Some("1"));
    assert_eq!(r.get(0, "name"), Some("é x"));
    assert_eq!(r.get(0, "amount"), Some("12.50"));
    assert_eq!(r.get(0, "doc"), Some(r#"{"a":[1,2]}"#));
    assert_eq!(r.get(1, "name"), None);
    // MERGE with a guard: a replay changes nothing. (The emulator needs a
    // current database and schema for MERGE.)
    c.query(&format!("USE DATABASE {db}"), &[]).await?;
    c.query("USE SCHEMA S", &[]).await?;
    let merge = format!(
        "MERGE INTO {db}.S.T t USING (SELECT 1 AS ID, 'new' AS NAME) s ON t.ID = s.ID \
         WHEN MATCHED AND t.NAME <> s.NAME THEN UPDATE SET NAME = s.NAME \
         WHEN NOT MATCHED THEN INSERT (ID, NAME) VALUES (s.ID, s.NAME)"
    );
    let first = c.query(&merge, &[]).await?;
    let again = c.query(&merge, &[]).await?;
    assert_eq!(first.get(0, "number of rows updated"), Some("1"));
    assert_eq!(again.get(0, "number of rows updated").unwrap_or("0"), "0");
    // A failing statement carries Snowflake's error code; quoted parts of its message are redacted.
    match c.query(&format!("SELECT * FROM {db}.S.NOPE"), &[]).await {
        Err(SnowflakeError::Query { code, .. }) => assert_eq!(code, "002003"),
        other => panic!("{other:?}"),
    }
    c.close().await;
    Ok(())
}

#[tokio::test]
async fn key_pair_login_is_accepted() -> anyhow::Result<()> {
    let mut cfg = config(&url());
    cfg.password = None;
    cfg.private_key_path = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/test_key_pkcs8.pem").into());
    let mut c = Client::new(cfg)?;
    let r = c.query("SELECT 41 + 1 AS N", &[]).await?;
    assert_eq!(r.get(0, "n"), Some("42"));
    Ok(())
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_named() -> anyhow::Result<()> {
    let mut cfg = config("http://127.0.0.1:9");
    cfg.max_retries = 2;
    cfg.retry_backoff = Duration::from_millis(50);
    let mut c = Client::new(cfg)?;
    let started = Instant::now();
    let err = c.login(None, None).await.expect_err("nothing listens on port 9");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("http://127.0.0.1:9"), "{err}");
    // Two backoffs (50 ms, 100 ms, plus jitter) before giving up.
    assert!(started.elapsed() >= Duration::from_millis(150));
    Ok(())
}
