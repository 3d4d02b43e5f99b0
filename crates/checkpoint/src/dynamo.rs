//! [`CheckpointStore`] on one DynamoDB table (single-table design).
//!
//! Item layout (`pk` = hash key, `sk` = range key, both strings). Name
//! components inside composite keys are escaped (`%` → `%25`, `#` → `%23`) so
//! two different names never map to the same key; numbers are zero-padded
//! decimals so they sort as strings.
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | lease | `lease#<name>` | `lease` |
//! | source checkpoint | `source#<source>` | `checkpoint` |
//! | partition checkpoint | `offsets#<group>` | `<topic>#<partition:010>` |
//! | manifest entry | `manifest#<tenant>#<database>#<table>` | `<topic>#<partition:010>#<first_offset:020>` |
//! | table status | `status#<tenant>` | `table#<source>#<database>#<table>` |
//! | database status | `status#<tenant>` | `db#<source>#<database>` |
//! | snapshot progress | `snapshot#<source>` | `<tenant>#<database>#<table>` |
//!
//! A snapshot item keeps its [`SnapshotProgress`] as JSON in `progress` and
//! the request number in `request` (N) for conditions.
//!
//! Every item also carries `kind` and its names as plain attributes; values
//! are read from those attributes, never parsed back out of keys. A pending
//! batch intent is stored as three attributes of the partition item:
//! `pending_first` (N), `pending_last` (N), `pending_key` (S), all absent when
//! nothing is pending.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Region;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, KeySchemaElement, KeyType, Put, ReturnValue,
    ScalarAttributeType, TableStatus as DynamoTableStatus, TransactWriteItem, Update,
};
use lablake_model::TableId;
use serde::{Deserialize, Serialize};

use crate::rules::{self, ALL_TABLES};
use crate::{
    BatchCommit, BatchIntent, CheckpointError, CheckpointStore, ManifestEntry, PartitionCheckpoint, SchemaVersion,
    SinkCheckpoint, SnapshotProgress, SourceCheckpoint, TableStatus,
};

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

/// Checkpoints in DynamoDB. See the module documentation for the item layout
/// and the crate README for the guarantees.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

/// Attempts of a transaction cancelled only by `TransactionConflict` (another
/// transaction on the same item, e.g. the shared database status row).
const CONFLICT_ATTEMPTS: u32 = 10;
/// How long [`DynamoStore::connect`] waits for a new table to become `ACTIVE`.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

type Item = HashMap<String, AttributeValue>;
/// The error reported when one item of a transaction fails its condition.
type Fence<'a> = Option<&'a (dyn Fn() -> CheckpointError + Sync)>;

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
        let store = DynamoStore { client: Client::from_conf(builder.build()), table: config.table.clone() };
        store.ensure_table(config.create_table).await?;
        Ok(store)
    }

    /// Name of the DynamoDB table.
    pub fn table(&self) -> &str {
        &self.table
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

    async fn get(&self, pk: String, sk: String, what: &str) -> Result<Option<Item>, CheckpointError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk))
            .key("sk", AttributeValue::S(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(format!("reading {what}"), e))?;
        Ok(out.item)
    }

    async fn get_partition(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        label: &str,
    ) -> Result<Option<PartitionCheckpoint>, CheckpointError> {
        self.get(partition_pk(group), partition_sk(topic, partition), label)
            .await?
            .map(|item| parse_partition(&item, label))
            .transpose()
    }

    /// Runs a transaction. `fenced[i]` is the error reported when item `i`
    /// fails its condition (`None`: item without condition). Transactions
    /// cancelled only by conflicts with other transactions are retried: every
    /// item is conditional on absolute values, so a retry can never apply a
    /// write twice or over a newer one.
    async fn transact(&self, what: &str, items: Vec<TransactWriteItem>, fenced: &[Fence<'_>]) -> Result<(), TxError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.client.transact_write_items().set_transact_items(Some(items.clone())).send().await;
            let err = match result {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(tce)) = err.as_service_error() {
                let codes: Vec<&str> = tce.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None")).collect();
                if let Some(i) = codes.iter().position(|c| *c == "ConditionalCheckFailed") {
                    return Err(TxError::Condition(i, fenced.get(i).copied().flatten().map(|f| f())));
                }
                if codes.contains(&"TransactionConflict") && attempt < CONFLICT_ATTEMPTS {
                    tracing::debug!(operation = what, attempt, "transaction conflict, retrying");
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                    continue;
                }
            }
            return Err(TxError::Other(sdk_error(what, err)));
        }
    }
}

enum TxError {
    /// Item `.0` failed its condition; `.1` is its fenced error, if it has one.
    Condition(usize, Option<CheckpointError>),
    Other(CheckpointError),
}

impl TxError {
    fn into_error(self, what: &str) -> CheckpointError {
        match self {
            TxError::Condition(_, Some(e)) | TxError::Other(e) => e,
            TxError::Condition(i, None) => CheckpointError::Fenced(format!("{what}: condition of item {i} failed")),
        }
    }
}

impl CheckpointStore for DynamoStore {
    async fn acquire_lease(&self, name: &str) -> Result<u64, CheckpointError> {
        let what = format!("lease `{name}`");
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(lease_pk(name)))
            .key("sk", AttributeValue::S("lease".into()))
            .update_expression("ADD #generation :one SET #kind = :kind, #name = :name, #updated = :now")
            .expression_attribute_names("#generation", "generation")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#name", "name")
            .expression_attribute_names("#updated", "updated_at_ms")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":kind", s("lease"))
            .expression_attribute_values(":name", s(name))
            .expression_attribute_values(":now", n(rules::now_ms()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| sdk_error(format!("acquiring {what}"), e))?;
        let attrs = out.attributes.unwrap_or_default();
        get_n(&attrs, "generation", &what)
    }

    async fn load_source(&self, source: &str) -> Result<Option<SourceCheckpoint>, CheckpointError> {
        let what = format!("source checkpoint `{source}`");
        let Some(item) = self.get(source_pk(source), "checkpoint".into(), &what).await? else {
            return Ok(None);
        };
        Ok(Some(SourceCheckpoint {
            file: get_s(&item, "file", &what)?,
            pos: get_n(&item, "pos", &what)?,
            gtid: opt_s(&item, "gtid", &what)?,
            position: get_s(&item, "position", &what)?,
            commit_ts_ms: get_n(&item, "commit_ts_ms", &what)?,
        }))
    }

    async fn save_source(
        &self,
        source: &str,
        generation: u64,
        checkpoint: &SourceCheckpoint,
    ) -> Result<(), CheckpointError> {
        let what = format!("source checkpoint `{source}`");
        let lease = rules::source_lease(source);
        let mut item = Item::new();
        item.insert("pk".into(), s(source_pk(source)));
        item.insert("sk".into(), s("checkpoint"));
        item.insert("kind".into(), s("source"));
        item.insert("source".into(), s(source));
        item.insert("file".into(), s(&checkpoint.file));
        item.insert("pos".into(), n(checkpoint.pos));
        if let Some(gtid) = &checkpoint.gtid {
            item.insert("gtid".into(), s(gtid));
        }
        item.insert("position".into(), s(&checkpoint.position));
        item.insert("commit_ts_ms".into(), n(checkpoint.commit_ts_ms));
        item.insert("generation".into(), n(generation));
        item.insert("updated_at_ms".into(), n(rules::now_ms()));
        let put = Put::builder().table_name(&self.table).set_item(Some(item)).build().map_err(|e| backend(&what, e))?;
        let items = vec![self.lease_check(&lease, generation)?, TransactWriteItem::builder().put(put).build()];
        let lease_err = || rules::lease_fenced(&lease, generation);
        self.transact(&format!("saving {what}"), items, &[Some(&lease_err), None])
            .await
            .map_err(|e| e.into_error(&what))
    }

    async fn load_partition(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<PartitionCheckpoint>, CheckpointError> {
        let label = rules::partition_label(group, topic, partition);
        self.get_partition(group, topic, partition, &label).await
    }

    async fn begin_batch(
        &self,
        group: &str,
        lease: &str,
        generation: u64,
        topic: &str,
        partition: i32,
        expected_version: Option<u64>,
        intent: &BatchIntent,
    ) -> Result<PartitionCheckpoint, CheckpointError> {
        let label = rules::partition_label(group, topic, partition);
        rules::check_partition_arg(&label, partition)?;
        rules::check_intent(&label, intent)?;
        // With an expected version, read the checkpoint (strongly consistent)
        // to carry `next_offset` over and to check the intent against it. The
        // write below is conditional on that same version, so the item cannot
        // have changed in between without the write failing.
        let current = match expected_version {
            Some(_) => self.get_partition(group, topic, partition, &label).await?,
            None => None,
        };
        let next = rules::plan_begin(&label, current.as_ref(), expected_version, generation, intent)?;

        let mut put =
            Put::builder().table_name(&self.table).set_item(Some(partition_item(group, topic, partition, &next)));
        put = match expected_version {
            None => put.condition_expression("attribute_not_exists(#pk)").expression_attribute_names("#pk", "pk"),
            Some(v) => put
                .condition_expression("#version = :expected")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":expected", n(v)),
        };
        let put = put.build().map_err(|e| backend(&label, e))?;
        let items = vec![self.lease_check(lease, generation)?, TransactWriteItem::builder().put(put).build()];
        let lease_err = || rules::lease_fenced(lease, generation);
        let partition_err = || match expected_version {
            None => CheckpointError::Fenced(format!("{label}: expected no checkpoint, but one exists")),
            Some(v) => {
                CheckpointError::Fenced(format!("{label}: expected version {v}, but it was changed concurrently"))
            }
        };
        match self
            .transact(&format!("beginning batch of {label}"), items, &[Some(&lease_err), Some(&partition_err)])
            .await
        {
            Ok(()) => {
                tracing::debug!(group, topic, partition, version = next.version, generation, "batch begun");
                Ok(next)
            }
            Err(TxError::Condition(1, _)) => {
                // Say what changed, from a fresh read (diagnosis only).
                Err(self
                    .diagnose(group, topic, partition, &label, partition_err(), |cur| {
                        rules::plan_begin(&label, cur, expected_version, generation, intent).err()
                    })
                    .await)
            }
            Err(e) => Err(e.into_error(&label)),
        }
    }

    async fn commit_batch(
        &self,
        group: &str,
        lease: &str,
        generation: u64,
        topic: &str,
        partition: i32,
        expected_version: u64,
        commit: &BatchCommit,
    ) -> Result<PartitionCheckpoint, CheckpointError> {
        let label = rules::partition_label(group, topic, partition);
        rules::check_partition_arg(&label, partition)?;
        rules::check_intent(&label, &commit.intent)?;
        let intent = &commit.intent;
        let next = PartitionCheckpoint {
            next_offset: intent.last_offset.saturating_add(1),
            pending: None,
            generation,
            version: expected_version + 1,
        };
        let now = rules::now_ms();
        let b = |e: aws_sdk_dynamodb::error::BuildError| backend(&label, e);

        // 1. The partition checkpoint: version and pending intent must match.
        let partition_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(partition_item(group, topic, partition, &next)))
            .condition_expression("#version = :expected AND #pfirst = :pfirst AND #plast = :plast AND #pkey = :pkey")
            .expression_attribute_names("#version", "version")
            .expression_attribute_names("#pfirst", "pending_first")
            .expression_attribute_names("#plast", "pending_last")
            .expression_attribute_names("#pkey", "pending_key")
            .expression_attribute_values(":expected", n(expected_version))
            .expression_attribute_values(":pfirst", n(intent.first_offset))
            .expression_attribute_values(":plast", n(intent.last_offset))
            .expression_attribute_values(":pkey", s(&intent.object_key))
            .build()
            .map_err(b)?;

        // 2. The manifest entry, never listed twice.
        let t = &commit.table;
        let mut entry = Item::new();
        entry.insert("pk".into(), s(manifest_pk(t)));
        entry.insert("sk".into(), s(manifest_sk(topic, partition, intent.first_offset)));
        entry.insert("kind".into(), s("manifest"));
        entry.insert("tenant".into(), s(&*t.tenant));
        entry.insert("database".into(), s(&*t.database));
        entry.insert("table".into(), s(&*t.table));
        entry.insert("source".into(), s(&commit.source));
        entry.insert("topic".into(), s(topic));
        entry.insert("partition".into(), n(partition));
        entry.insert("first_offset".into(), n(intent.first_offset));
        entry.insert("last_offset".into(), n(intent.last_offset));
        entry.insert("object_key".into(), s(&intent.object_key));
        entry.insert("rows".into(), n(commit.rows));
        entry.insert("bytes".into(), n(commit.bytes));
        entry.insert("generation".into(), n(generation));
        entry.insert("committed_at_ms".into(), n(now));
        let manifest_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(entry))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", "pk")
            .build()
            .map_err(b)?;

        // 3. and 4. Status of the table and of its source database.
        let table_status = self.status_update(commit, &t.table, now).map_err(b)?;
        let db_status = self.status_update(commit, ALL_TABLES, now).map_err(b)?;

        let items = vec![
            self.lease_check(lease, generation)?,
            TransactWriteItem::builder().put(partition_put).build(),
            TransactWriteItem::builder().put(manifest_put).build(),
            TransactWriteItem::builder().update(table_status).build(),
            TransactWriteItem::builder().update(db_status).build(),
        ];
        let lease_err = || rules::lease_fenced(lease, generation);
        let partition_err = || {
            CheckpointError::Fenced(format!(
                "{label}: expected version {expected_version} with the committed batch pending, but it was changed"
            ))
        };
        let manifest_err = || {
            CheckpointError::Fenced(format!(
                "manifest of `{}`/`{}`/`{}` already lists the batch of {label} starting at offset {}",
                t.tenant, t.database, t.table, intent.first_offset
            ))
        };
        let fenced: [Fence<'_>; 5] = [Some(&lease_err), Some(&partition_err), Some(&manifest_err), None, None];
        match self.transact(&format!("committing batch of {label}"), items, &fenced).await {
            Ok(()) => {
                tracing::debug!(group, topic, partition, version = next.version, generation, "batch committed");
                Ok(next)
            }
            Err(TxError::Condition(1, _)) => Err(self
                .diagnose(group, topic, partition, &label, partition_err(), |cur| {
                    rules::plan_commit(&label, cur, expected_version, generation, commit).err()
                })
                .await),
            Err(e) => Err(e.into_error(&label)),
        }
    }

    async fn manifest(&self, table: &TableId) -> Result<Vec<ManifestEntry>, CheckpointError> {
        let what = format!("manifest of `{}`/`{}`/`{}`", table.tenant, table.database, table.table);
        let items = self.query_pk(manifest_pk(table), &what).await?;
        let mut entries = items
            .iter()
            .map(|item| {
                Ok(ManifestEntry {
                    topic: get_s(item, "topic", &what)?,
                    partition: get_n(item, "partition", &what)?,
                    first_offset: get_n(item, "first_offset", &what)?,
                    last_offset: get_n(item, "last_offset", &what)?,
                    object_key: get_s(item, "object_key", &what)?,
                    rows: get_n(item, "rows", &what)?,
                    bytes: get_n(item, "bytes", &what)?,
                })
            })
            .collect::<Result<Vec<_>, CheckpointError>>()?;
        // The sort key already orders them; sorting again keeps the contract
        // independent of how topic names compare with the `#` separator.
        entries.sort_by(|a, b| (&a.topic, a.partition, a.first_offset).cmp(&(&b.topic, b.partition, b.first_offset)));
        Ok(entries)
    }

    async fn status(&self, tenant: Option<&str>) -> Result<Vec<TableStatus>, CheckpointError> {
        let items = match tenant {
            Some(t) => self.query_pk(status_pk(t), &format!("status of tenant `{t}`")).await?,
            None => self.scan_status().await?,
        };
        let mut rows = items
            .iter()
            .map(|item| {
                let what = "status row";
                Ok(TableStatus {
                    tenant: get_s(item, "tenant", what)?,
                    source: get_s(item, "source", what)?,
                    database: get_s(item, "database", what)?,
                    table: get_s(item, "table", what)?,
                    rows: get_n(item, "rows", what)?,
                    files: get_n(item, "files", what)?,
                    dead_lettered: get_n(item, "dead_lettered", what)?,
                    max_commit_ts_ms: get_n(item, "max_commit_ts_ms", what)?,
                    max_position: get_s(item, "max_position", what)?,
                    updated_at_ms: get_n(item, "updated_at_ms", what)?,
                })
            })
            .collect::<Result<Vec<_>, CheckpointError>>()?;
        // Defensive: a tenant query only ever reads that tenant's partition.
        if let Some(t) = tenant {
            rows.retain(|r| r.tenant == t);
        }
        rules::sort_status(&mut rows);
        Ok(rows)
    }

    async fn request_snapshot(&self, source: &str, table: &TableId, if_absent: bool) -> Result<bool, CheckpointError> {
        let what = format!("snapshot request of `{source}` for {}.{}.{}", table.tenant, table.database, table.table);
        // A read, then a put conditional on what was read: two racing
        // requests cannot both take the same number.
        for _ in 0..CONFLICT_ATTEMPTS {
            let current = self.get(snapshot_pk(source), snapshot_sk(table), &what).await?;
            let previous: Option<u64> = current.as_ref().map(|i| get_n(i, "request", &what)).transpose()?;
            if if_absent && previous.is_some() {
                return Ok(false);
            }
            let progress = SnapshotProgress::requested(table, previous.unwrap_or(0) + 1, rules::now_ms());
            let put = self.client.put_item().table_name(&self.table).set_item(Some(snapshot_item(source, &progress)?));
            let put = match previous {
                None => put.condition_expression("attribute_not_exists(pk)"),
                Some(r) => put
                    .condition_expression("#request = :request")
                    .expression_attribute_names("#request", "request")
                    .expression_attribute_values(":request", n(r)),
            };
            match put.send().await {
                Ok(_) => return Ok(true),
                Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                    if if_absent {
                        return Ok(false);
                    }
                    continue;
                }
                Err(e) => return Err(sdk_error(format!("writing {what}"), e)),
            }
        }
        Err(CheckpointError::Backend { message: format!("{what}: too many concurrent requests"), source: None })
    }

    async fn snapshots(&self, source: &str) -> Result<Vec<SnapshotProgress>, CheckpointError> {
        let what = format!("snapshots of `{source}`");
        let mut out: Vec<SnapshotProgress> = self.query_json(snapshot_pk(source), "progress", &what).await?;
        out.sort_by(|a, b| a.table.cmp(&b.table));
        Ok(out)
    }

    async fn save_snapshot(
        &self,
        source: &str,
        generation: u64,
        progress: &SnapshotProgress,
    ) -> Result<bool, CheckpointError> {
        let t = &progress.table;
        let what = format!("snapshot progress of `{source}` for {}.{}.{}", t.tenant, t.database, t.table);
        let lease = rules::source_lease(source);
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(snapshot_item(source, progress)?))
            .condition_expression("#request = :request")
            .expression_attribute_names("#request", "request")
            .expression_attribute_values(":request", n(progress.request))
            .build()
            .map_err(|e| backend(&what, e))?;
        let items = vec![self.lease_check(&lease, generation)?, TransactWriteItem::builder().put(put).build()];
        let lease_err = || rules::lease_fenced(&lease, generation);
        match self.transact(&format!("saving {what}"), items, &[Some(&lease_err), None]).await {
            Ok(()) => Ok(true),
            // The request was replaced by a newer one (or removed).
            Err(TxError::Condition(1, None)) => Ok(false),
            Err(e) => Err(e.into_error(&what)),
        }
    }

    async fn register_schema(&self, table: &TableId, candidate: &SchemaVersion) -> Result<u32, CheckpointError> {
        let what = format!("schema history of {}.{}.{}", table.tenant, table.database, table.table);
        // Read the history, then create the next entry conditionally: a racing
        // registrar that took the number first makes us read again.
        for _ in 0..CONFLICT_ATTEMPTS {
            let history = self.schema_history(table).await?;
            let entry = match crate::schema::register(&history, candidate) {
                crate::schema::Registration::Existing(v) => return Ok(v),
                crate::schema::Registration::Append(entry) => entry,
            };
            let json = serde_json::to_string(&entry).map_err(|e| backend("encoding a schema version", e))?;
            let mut item = Item::new();
            item.insert("pk".into(), s(schema_pk(table)));
            item.insert("sk".into(), s(format!("v{:010}", entry.version)));
            item.insert("kind".into(), s("schema"));
            item.insert("fingerprint".into(), s(&entry.fingerprint));
            item.insert("entry".into(), s(json));
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)");
            match put.send().await {
                Ok(_) => return Ok(entry.version),
                Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => continue,
                Err(e) => return Err(sdk_error(format!("writing {what}"), e)),
            }
        }
        Err(CheckpointError::Backend { message: format!("{what}: too many concurrent registrations"), source: None })
    }

    async fn load_sink(&self, sink: &str, table: &TableId) -> Result<Option<SinkCheckpoint>, CheckpointError> {
        let what = format!("sink checkpoint of `{sink}` for {}.{}.{}", table.tenant, table.database, table.table);
        match self.get(sink_pk(sink), snapshot_sk(table), &what).await? {
            None => Ok(None),
            Some(item) => {
                let json = get_s(&item, "checkpoint", &what)?;
                serde_json::from_str(&json).map(Some).map_err(|_| corrupt(&what, "checkpoint"))
            }
        }
    }

    async fn sinks(&self, sink: &str) -> Result<Vec<SinkCheckpoint>, CheckpointError> {
        let what = format!("sink checkpoints of `{sink}`");
        let mut out: Vec<SinkCheckpoint> = self.query_json(sink_pk(sink), "checkpoint", &what).await?;
        out.sort_by(|a, b| a.table.cmp(&b.table));
        Ok(out)
    }

    async fn save_sink(&self, sink: &str, generation: u64, checkpoint: &SinkCheckpoint) -> Result<(), CheckpointError> {
        let t = &checkpoint.table;
        let what = format!("sink checkpoint of `{sink}` for {}.{}.{}", t.tenant, t.database, t.table);
        let lease = rules::sink_lease(sink);
        let json = serde_json::to_string(checkpoint).map_err(|e| backend("encoding a sink checkpoint", e))?;
        let mut item = Item::new();
        item.insert("pk".into(), s(sink_pk(sink)));
        item.insert("sk".into(), s(snapshot_sk(t)));
        item.insert("kind".into(), s("sink"));
        item.insert("checkpoint".into(), s(json));
        item.insert("generation".into(), n(generation));
        item.insert("updated_at_ms".into(), n(rules::now_ms()));
        let put = Put::builder().table_name(&self.table).set_item(Some(item)).build().map_err(|e| backend(&what, e))?;
        let items = vec![self.lease_check(&lease, generation)?, TransactWriteItem::builder().put(put).build()];
        let lease_err = || rules::lease_fenced(&lease, generation);
        self.transact(&format!("saving {what}"), items, &[Some(&lease_err), None])
            .await
            .map_err(|e| e.into_error(&what))
    }

    async fn schema_history(&self, table: &TableId) -> Result<Vec<SchemaVersion>, CheckpointError> {
        let what = format!("schema history of {}.{}.{}", table.tenant, table.database, table.table);
        let mut out: Vec<SchemaVersion> = self.query_json(schema_pk(table), "entry", &what).await?;
        out.sort_by_key(|v| v.version);
        Ok(out)
    }
}

impl DynamoStore {
    fn lease_check(&self, lease: &str, generation: u64) -> Result<TransactWriteItem, CheckpointError> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s(lease_pk(lease)))
            .key("sk", s("lease"))
            .condition_expression("#generation = :generation")
            .expression_attribute_names("#generation", "generation")
            .expression_attribute_values(":generation", n(generation))
            .build()
            .map_err(|e| backend(format!("lease `{lease}`"), e))?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    fn status_update(
        &self,
        commit: &BatchCommit,
        table: &str,
        now: i64,
    ) -> Result<Update, aws_sdk_dynamodb::error::BuildError> {
        let t = &commit.table;
        let sk = if table == ALL_TABLES {
            format!("db#{}#{}", esc(&commit.source), esc(&t.database))
        } else {
            format!("table#{}#{}#{}", esc(&commit.source), esc(&t.database), esc(table))
        };
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(status_pk(&t.tenant)))
            .key("sk", s(sk))
            .update_expression(
                "ADD #rows :rows, #files :one, #dl :dl \
                 SET #kind = :kind, #tenant = :tenant, #source = :source, #database = :database, #table = :table, \
                 #ts = :ts, #position = :position, #updated = :now",
            )
            .expression_attribute_names("#rows", "rows")
            .expression_attribute_names("#files", "files")
            .expression_attribute_names("#dl", "dead_lettered")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#tenant", "tenant")
            .expression_attribute_names("#source", "source")
            .expression_attribute_names("#database", "database")
            .expression_attribute_names("#table", "table")
            .expression_attribute_names("#ts", "max_commit_ts_ms")
            .expression_attribute_names("#position", "max_position")
            .expression_attribute_names("#updated", "updated_at_ms")
            .expression_attribute_values(":rows", n(commit.rows))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":dl", n(commit.dead_lettered))
            .expression_attribute_values(":kind", s(if table == ALL_TABLES { "status-db" } else { "status-table" }))
            .expression_attribute_values(":tenant", s(&*t.tenant))
            .expression_attribute_values(":source", s(&commit.source))
            .expression_attribute_values(":database", s(&*t.database))
            .expression_attribute_values(":table", s(table))
            .expression_attribute_values(":ts", n(commit.max_commit_ts_ms))
            .expression_attribute_values(":position", s(&commit.max_position))
            .expression_attribute_values(":now", n(now))
            .build()
    }

    /// After a failed condition on the partition item: re-read it and let the
    /// shared rules say why; `fallback` when the read does not explain it.
    async fn diagnose(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        label: &str,
        fallback: CheckpointError,
        explain: impl FnOnce(Option<&PartitionCheckpoint>) -> Option<CheckpointError>,
    ) -> CheckpointError {
        match self.get_partition(group, topic, partition, label).await {
            Ok(current) => explain(current.as_ref()).unwrap_or(fallback),
            Err(_) => fallback,
        }
    }

    /// Every item of `pk`, each decoded from the JSON in attribute `attr`.
    async fn query_json<T: serde::de::DeserializeOwned>(
        &self,
        pk: String,
        attr: &str,
        what: &str,
    ) -> Result<Vec<T>, CheckpointError> {
        self.query_pk(pk, what)
            .await?
            .iter()
            .map(|item| {
                let json = get_s(item, attr, what)?;
                serde_json::from_str(&json).map_err(|_| corrupt(what, attr))
            })
            .collect()
    }

    async fn query_pk(&self, pk: String, what: &str) -> Result<Vec<Item>, CheckpointError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_values(":pk", s(&pk))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error(format!("querying {what}"), e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    async fn scan_status(&self) -> Result<Vec<Item>, CheckpointError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(#pk, :prefix)")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_values(":prefix", s("status#"))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("scanning status rows", e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }
}

// ---- keys ---------------------------------------------------------------

/// Escapes a name used inside a composite key.
fn esc(name: &str) -> String {
    name.replace('%', "%25").replace('#', "%23")
}

fn lease_pk(name: &str) -> String {
    format!("lease#{name}")
}

fn source_pk(source: &str) -> String {
    format!("source#{source}")
}

fn partition_pk(group: &str) -> String {
    format!("offsets#{group}")
}

fn partition_sk(topic: &str, partition: i32) -> String {
    format!("{}#{partition:010}", esc(topic))
}

fn manifest_pk(t: &TableId) -> String {
    format!("manifest#{}#{}#{}", esc(&t.tenant), esc(&t.database), esc(&t.table))
}

fn manifest_sk(topic: &str, partition: i32, first_offset: i64) -> String {
    format!("{}#{partition:010}#{first_offset:020}", esc(topic))
}

fn snapshot_pk(source: &str) -> String {
    format!("snapshot#{}", esc(source))
}

fn snapshot_sk(t: &TableId) -> String {
    format!("{}#{}#{}", esc(&t.tenant), esc(&t.database), esc(&t.table))
}

fn sink_pk(sink: &str) -> String {
    format!("sink#{}", esc(sink))
}

fn schema_pk(t: &TableId) -> String {
    format!("schema#{}#{}#{}", esc(&t.tenant), esc(&t.database), esc(&t.table))
}

fn snapshot_item(source: &str, p: &SnapshotProgress) -> Result<Item, CheckpointError> {
    let json = serde_json::to_string(p).map_err(|e| backend("encoding snapshot progress", e))?;
    let mut item = Item::new();
    item.insert("pk".into(), s(snapshot_pk(source)));
    item.insert("sk".into(), s(snapshot_sk(&p.table)));
    item.insert("kind".into(), s("snapshot"));
    item.insert("source".into(), s(source));
    item.insert("request".into(), n(p.request));
    item.insert("state".into(), s(p.state.as_str()));
    item.insert("progress".into(), s(json));
    item.insert("updated_at_ms".into(), n(rules::now_ms()));
    Ok(item)
}

fn status_pk(tenant: &str) -> String {
    format!("status#{tenant}")
}

fn partition_item(group: &str, topic: &str, partition: i32, cp: &PartitionCheckpoint) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(partition_pk(group)));
    item.insert("sk".into(), s(partition_sk(topic, partition)));
    item.insert("kind".into(), s("partition"));
    item.insert("group".into(), s(group));
    item.insert("topic".into(), s(topic));
    item.insert("partition".into(), n(partition));
    item.insert("next_offset".into(), n(cp.next_offset));
    item.insert("generation".into(), n(cp.generation));
    item.insert("version".into(), n(cp.version));
    if let Some(p) = &cp.pending {
        item.insert("pending_first".into(), n(p.first_offset));
        item.insert("pending_last".into(), n(p.last_offset));
        item.insert("pending_key".into(), s(&p.object_key));
    }
    item.insert("updated_at_ms".into(), n(rules::now_ms()));
    item
}

fn parse_partition(item: &Item, what: &str) -> Result<PartitionCheckpoint, CheckpointError> {
    let pending = match opt_s(item, "pending_key", what)? {
        Some(object_key) => Some(BatchIntent {
            first_offset: get_n(item, "pending_first", what)?,
            last_offset: get_n(item, "pending_last", what)?,
            object_key,
        }),
        None => None,
    };
    Ok(PartitionCheckpoint {
        next_offset: get_n(item, "next_offset", what)?,
        pending,
        generation: get_n(item, "generation", what)?,
        version: get_n(item, "version", what)?,
    })
}

// ---- attributes -----------------------------------------------------------

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn corrupt(what: &str, attr: &str) -> CheckpointError {
    CheckpointError::Corrupt(format!("{what} (attribute `{attr}`)"))
}

fn get_s(item: &Item, attr: &str, what: &str) -> Result<String, CheckpointError> {
    opt_s(item, attr, what)?.ok_or_else(|| corrupt(what, attr))
}

fn opt_s(item: &Item, attr: &str, what: &str) -> Result<Option<String>, CheckpointError> {
    match item.get(attr) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(corrupt(what, attr)),
    }
}

fn get_n<T: std::str::FromStr>(item: &Item, attr: &str, what: &str) -> Result<T, CheckpointError> {
    match item.get(attr) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt(what, attr)),
        _ => Err(corrupt(what, attr)),
    }
}

// ---- errors ---------------------------------------------------------------

/// A failed AWS call: retryable. The message has the service's error code and
/// message, or the transport error chain — not the raw response.
fn sdk_error<E, R>(what: impl Display, err: SdkError<E, R>) -> CheckpointError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = match err.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("unknown service error"),
            service.message().unwrap_or("no message")
        ),
        None => error_chain(&err),
    };
    CheckpointError::Backend { message: format!("{what}: {detail}"), source: Some(Box::new(err)) }
}

fn backend(what: impl Display, err: impl std::error::Error + Send + Sync + 'static) -> CheckpointError {
    CheckpointError::Backend { message: format!("{what}: {}", error_chain(&err)), source: Some(Box::new(err)) }
}

/// `error: source: source …`, Display only.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// Exponential backoff with jitter for transaction conflicts: 10 ms · 2ⁿ, at
/// most 1 s, scaled by a factor in [0.5, 1).
fn conflict_backoff(attempt: u32) -> Duration {
    let base = 10u64.saturating_mul(1 << attempt.min(7)).min(1000);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let jitter = u64::from(nanos % 500) + 500; // 500..1000 per mille
    Duration::from_millis(base * jitter / 1000)
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

    #[test]
    fn keys_sort_and_do_not_collide() {
        assert_eq!(partition_sk("acme.changes", 3), "acme.changes#0000000003");
        assert_eq!(manifest_sk("t", 1, 42), "t#0000000001#00000000000000000042");
        assert!(manifest_sk("t", 1, 9) < manifest_sk("t", 1, 10));
        assert!(manifest_sk("t", 9, 100) < manifest_sk("t", 10, 0));
        let a = TableId { tenant: "x".into(), database: "a#b".into(), table: "c".into() };
        let b = TableId { tenant: "x".into(), database: "a".into(), table: "b#c".into() };
        assert_ne!(manifest_pk(&a), manifest_pk(&b));
        assert_eq!(esc("50%#"), "50%25%23");
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 1..20 {
            let d = conflict_backoff(attempt);
            assert!(d <= Duration::from_secs(1));
        }
    }
}
