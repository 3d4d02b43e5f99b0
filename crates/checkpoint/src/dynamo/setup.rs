//! The table's lifecycle: configuration, connecting, creating the table (or
//! checking an existing one's key schema) and waiting until it is `ACTIVE`.

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Region;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus as DynamoTableStatus,
};
use serde::{Deserialize, Serialize};

use super::{DynamoStore, backend, sdk_error};
use crate::CheckpointError;

/// Configuration of the DynamoDB checkpoint store. Credentials come from the
/// standard AWS chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_PROFILE`, web identity, instance metadata …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamoConfig {
    /// DynamoDB table holding every checkpoint item.
    pub table: String,
    /// Endpoint override, e.g. `http://127.0.0.1:25000` for moto or DynamoDB
    /// Local. Unset: the AWS endpoint of the region (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// AWS region. Unset: `AWS_REGION` / the profile's region.
    pub region: Option<String>,
    /// Create the table (hash key `pk`, range key `sk`, on-demand billing) if
    /// it does not exist, and wait until it is `ACTIVE`.
    pub create_table: bool,
}

impl Default for DynamoConfig {
    fn default() -> Self {
        DynamoConfig { table: "lablake_checkpoints".into(), endpoint: None, region: None, create_table: true }
    }
}

/// How long [`DynamoStore::connect`] waits for a new table to become `ACTIVE`.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

impl DynamoStore {
    /// Connects with the default AWS configuration chain (region and endpoint
    /// from `config` take precedence) and makes sure the table exists.
    pub async fn connect(config: &DynamoConfig) -> Result<Self, CheckpointError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        Self::connect_with(&sdk, config).await
    }

    /// Like [`Self::connect`], with an already loaded [`SdkConfig`] (shared
    /// with other AWS clients, or with explicit credentials in tests).
    pub async fn connect_with(sdk: &SdkConfig, config: &DynamoConfig) -> Result<Self, CheckpointError> {
        validate_config(config)?;
        let mut builder = aws_sdk_dynamodb::config::Builder::from(sdk);
        if let Some(region) = &config.region {
            builder = builder.region(Region::new(region.clone()));
        } else if sdk.region().is_none() {
            return Err(CheckpointError::Config {
                key: "region".into(),
                reason: "no AWS region: set `region` or AWS_REGION".into(),
            });
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let store =
            DynamoStore { client: Client::from_conf(builder.build()), table: config.table.clone(), data_gen: 0 };
        store.ensure_table(config.create_table).await?;
        Ok(store)
    }

    async fn ensure_table(&self, create: bool) -> Result<(), CheckpointError> {
        match self.client.describe_table().table_name(&self.table).send().await {
            Ok(out) => {
                if let Some(desc) = out.table() {
                    check_key_schema(&self.table, desc.key_schema())?;
                    if desc.table_status() == Some(&DynamoTableStatus::Active) {
                        return Ok(());
                    }
                }
                self.wait_active().await
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => {
                if !create {
                    return Err(CheckpointError::Config {
                        key: "table".into(),
                        reason: format!("table `{}` does not exist and `create_table` is false", self.table),
                    });
                }
                self.create_table().await?;
                self.wait_active().await
            }
            Err(e) => Err(sdk_error(format!("describing table `{}`", self.table), e)),
        }
    }

    async fn create_table(&self) -> Result<(), CheckpointError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| backend("building CreateTable", e);
        let attr = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
        };
        let key = |name: &str, kind: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
        let result = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attr("pk").map_err(build)?)
            .attribute_definitions(attr("sk").map_err(build)?)
            .key_schema(key("pk", KeyType::Hash).map_err(build)?)
            .key_schema(key("sk", KeyType::Range).map_err(build)?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::info!(table = %self.table, "created checkpoint table");
                Ok(())
            }
            // Created concurrently by another process: fine, wait for it.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => Ok(()),
            Err(e) => Err(sdk_error(format!("creating table `{}`", self.table), e)),
        }
    }

    async fn wait_active(&self) -> Result<(), CheckpointError> {
        let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| sdk_error(format!("describing table `{}`", self.table), e))?;
            if let Some(desc) = out.table() {
                check_key_schema(&self.table, desc.key_schema())?;
                if desc.table_status() == Some(&DynamoTableStatus::Active) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CheckpointError::Backend {
                    message: format!(
                        "table `{}` did not become ACTIVE within {} s",
                        self.table,
                        TABLE_ACTIVE_TIMEOUT.as_secs()
                    ),
                    source: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn validate_config(config: &DynamoConfig) -> Result<(), CheckpointError> {
    let t = &config.table;
    let valid_name =
        (3..=255).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !valid_name {
        return Err(CheckpointError::Config {
            key: "table".into(),
            reason: "must be 3 to 255 characters of [a-zA-Z0-9_.-]".into(),
        });
    }
    if let Some(e) = &config.endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        return Err(CheckpointError::Config {
            key: "endpoint".into(),
            reason: "must be an http:// or https:// URL".into(),
        });
    }
    if config.region.as_deref().is_some_and(str::is_empty) {
        return Err(CheckpointError::Config { key: "region".into(), reason: "must not be empty".into() });
    }
    Ok(())
}

fn check_key_schema(table: &str, schema: &[KeySchemaElement]) -> Result<(), CheckpointError> {
    let has = |name: &str, kind: KeyType| schema.iter().any(|k| k.attribute_name() == name && *k.key_type() == kind);
    if schema.len() == 2 && has("pk", KeyType::Hash) && has("sk", KeyType::Range) {
        Ok(())
    } else {
        Err(CheckpointError::Config {
            key: "table".into(),
            reason: format!("table `{table}` exists but its key is not (pk HASH, sk RANGE)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: DynamoConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(c, DynamoConfig::default());
        assert_eq!(c.table, "lablake_checkpoints");
        assert!(c.create_table);
        let c: DynamoConfig = serde_json::from_str(
            r#"{"table":"t_1","endpoint":"http://127.0.0.1:25000","region":"us-east-1","create_table":false}"#,
        )
        .expect("full");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:25000"));
        assert!(!c.create_table);
        assert!(serde_json::from_str::<DynamoConfig>(r#"{"tabel":"x"}"#).is_err());
    }

    #[test]
    fn config_is_validated() {
        let bad_table = DynamoConfig { table: "a b".into(), ..DynamoConfig::default() };
        assert!(matches!(validate_config(&bad_table), Err(CheckpointError::Config { key, .. }) if key == "table"));
        let bad_endpoint = DynamoConfig { endpoint: Some("127.0.0.1:1".into()), ..DynamoConfig::default() };
        assert!(
            matches!(validate_config(&bad_endpoint), Err(CheckpointError::Config { key, .. }) if key == "endpoint")
        );
        assert!(validate_config(&DynamoConfig::default()).is_ok());
    }
}
