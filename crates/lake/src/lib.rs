//! The curated lake on an S3-compatible object store.
//!
//! # Guarantees
//!
//! * **Deterministic keys.** A batch's key is a function of its table and its
//!   Kafka offset range only ([`curated_key`]), so a retried batch targets the
//!   same key.
//! * **Create-only writes.** [`Lake::put_create`] uses a conditional create
//!   (`If-None-Match: *`); an existing object is never overwritten. Finding the
//!   key already present is reported as [`PutOutcome::AlreadyExists`] — the
//!   batch was made durable by an earlier attempt.
//! * **Tenant isolation.** Every key starts with `<tenant>/`, and a bucket per
//!   tenant can be configured (`bucket_per_tenant = "lablake-{tenant}"`).
//! * A put returns only after the store acknowledged the whole object; only
//!   then may the Kafka offsets of the batch be checkpointed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use lablake_model::{Date, TableId};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Deserialize;
use thiserror::Error;

/// Errors of the lake.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LakeError {
    #[error("invalid lake configuration `{key}`: {reason}")]
    Config { key: String, reason: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// Where curated files go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// Bucket for all tenants (keys are prefixed with the tenant).
    pub bucket: String,
    /// A bucket per tenant instead, e.g. `lablake-{tenant}`.
    #[serde(default)]
    pub bucket_per_tenant: Option<String>,
    /// S3 endpoint override (MinIO, moto), e.g. `http://127.0.0.1:25000`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// AWS region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Allow plain HTTP endpoints (local test services only).
    #[serde(default)]
    pub allow_http: bool,
    /// Zstd level of Parquet pages.
    #[serde(default = "default_zstd")]
    pub zstd_level: i32,
    /// Retries of a failed S3 request inside the object-store client
    /// (backoff 100 ms doubling to 2 s, at most 20 s in all) before the
    /// error reaches the caller. Kept low: the curator retries a failed
    /// batch itself, per partition, so one tenant's failing writes do not
    /// hold the others for long.
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_zstd() -> i32 {
    3
}
fn default_max_retries() -> usize {
    3
}

/// Result of a create-only put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The key existed already (an earlier attempt made it durable).
    AlreadyExists,
}

/// The deterministic key of a curated batch of generation `data_gen` (ADR
/// 0013):
/// `<tenant>/curated/<db>/<table>/dt=YYYY-MM-DD/<topic>-p<partition>-<first>-<last>.parquet`
/// for generation 0 (the keys written before generations existed), with
/// `<tenant>/g<N>/curated/…` for generation N > 0; zero-padded partition and
/// offsets so keys sort by offset.
pub fn curated_key(
    table: &TableId,
    data_gen: u32,
    date: Date,
    topic: &str,
    partition: i32,
    first: i64,
    last: i64,
) -> String {
    format!("{}dt={date}/{topic}-p{partition:05}-{first:020}-{last:020}.parquet", curated_prefix(table, data_gen))
}

/// What a curated key says about its file: topic, partition, first and last
/// offset (the inverse of [`curated_key`] for the file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CuratedFile<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// Parses the file name of a curated key; `None` for anything else.
pub fn parse_curated_key(key: &str) -> Option<CuratedFile<'_>> {
    let name = key.rsplit('/').next()?.strip_suffix(".parquet")?;
    let mut parts = name.rsplitn(3, '-');
    let last = parts.next()?;
    let first = parts.next()?;
    let (topic, partition) = parts.next()?.rsplit_once("-p")?;
    let digits = |s: &str| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(last) || !digits(first) || !digits(partition) {
        return None;
    }
    Some(CuratedFile {
        topic,
        partition: partition.parse().ok()?,
        first: first.parse().ok()?,
        last: last.parse().ok()?,
    })
}

/// The prefix of a tenant's curated table in generation `data_gen`. No
/// generation's prefix is a prefix of another's, so a listing never mixes
/// two generations.
pub fn curated_prefix(table: &TableId, data_gen: u32) -> String {
    format!(
        "{}curated/{}/{}/",
        generation_prefix(&table.tenant, data_gen),
        path_segment(&table.database),
        path_segment(&table.table)
    )
}

/// What a generation's keys start with: `<tenant>/` for generation 0 (its
/// curated data is under `<tenant>/curated/`), `<tenant>/g<N>/` otherwise.
pub fn generation_prefix(tenant: &str, data_gen: u32) -> String {
    if data_gen == 0 { format!("{tenant}/") } else { format!("{tenant}/g{data_gen}/") }
}

fn path_segment(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// Encodes a batch as Parquet (zstd), with `metadata` as key-value metadata.
/// Deterministic: the same batch always gives the same bytes.
pub fn encode_parquet(batch: &RecordBatch, zstd_level: i32) -> Result<Bytes, LakeError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level)?))
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 2 + 1024);
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    Ok(Bytes::from(buf))
}

/// Decodes a Parquet file into record batches.
pub fn decode_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>, LakeError> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    // Batches come back without the schema's key-value metadata; put it back.
    let schema = builder.schema().clone();
    let reader = builder.build()?;
    reader.map(|b| b.and_then(|b| b.with_schema(schema.clone())).map_err(|e| LakeError::Parquet(e.into()))).collect()
}

/// A handle on the lake's object store(s).
#[derive(Clone)]
pub struct Lake {
    config: LakeConfig,
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl Lake {
    /// Validates the configuration; buckets are opened lazily. Credentials
    /// come from the standard `AWS_*` environment variables.
    pub fn new(config: LakeConfig) -> Result<Self, LakeError> {
        if config.bucket.is_empty() {
            return Err(LakeError::Config { key: "bucket".into(), reason: "must not be empty".into() });
        }
        if let Some(p) = &config.bucket_per_tenant
            && !p.contains("{tenant}")
        {
            return Err(LakeError::Config {
                key: "bucket_per_tenant".into(),
                reason: "must contain `{tenant}`".into(),
            });
        }
        if let Some(e) = &config.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(LakeError::Config {
                    key: "endpoint".into(),
                    reason: "must be an http:// or https:// URL".into(),
                });
            }
            if e.starts_with("http://") && !config.allow_http {
                return Err(LakeError::Config {
                    key: "endpoint".into(),
                    reason: "plain http needs `allow_http = true`".into(),
                });
            }
        }
        Ok(Lake { config, stores: Arc::new(Mutex::new(HashMap::new())) })
    }

    pub fn config(&self) -> &LakeConfig {
        &self.config
    }

    /// The bucket holding a tenant's files.
    pub fn bucket_of(&self, tenant: &str) -> String {
        match &self.config.bucket_per_tenant {
            Some(p) => p.replace("{tenant}", tenant),
            None => self.config.bucket.clone(),
        }
    }

    /// The object store of a tenant's bucket.
    pub fn store_for(&self, tenant: &str) -> Result<Arc<dyn ObjectStore>, LakeError> {
        let bucket = self.bucket_of(tenant);
        let mut stores =
            self.stores.lock().map_err(|_| LakeError::Config { key: "bucket".into(), reason: "poisoned".into() })?;
        if let Some(s) = stores.get(&bucket) {
            return Ok(s.clone());
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&bucket).with_region(&self.config.region);
        if let Some(e) = &self.config.endpoint {
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
        }
        b = b.with_allow_http(self.config.allow_http).with_retry(object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: std::time::Duration::from_millis(100),
                max_backoff: std::time::Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: self.config.max_retries,
            retry_timeout: std::time::Duration::from_secs(20),
        });
        let store: Arc<dyn ObjectStore> = Arc::new(b.build()?);
        stores.insert(bucket, store.clone());
        Ok(store)
    }

    /// Writes `bytes` at `key` in the tenant's bucket unless the key exists.
    pub async fn put_create(&self, tenant: &str, key: &str, bytes: Bytes) -> Result<PutOutcome, LakeError> {
        let store = self.store_for(tenant)?;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match store.put_opts(&Path::from(key), PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads an object.
    pub async fn get(&self, tenant: &str, key: &str) -> Result<Bytes, LakeError> {
        let store = self.store_for(tenant)?;
        Ok(store.get(&Path::from(key)).await?.bytes().await?)
    }

    /// Lists keys under a prefix of the tenant's bucket, sorted.
    pub async fn list(&self, tenant: &str, prefix: &str) -> Result<Vec<String>, LakeError> {
        use futures::TryStreamExt;
        let store = self.store_for(tenant)?;
        let p = Path::from(prefix.trim_end_matches('/'));
        let mut keys: Vec<String> = store.list(Some(&p)).map_ok(|m| m.location.to_string()).try_collect().await?;
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_and_sort_by_offset() {
        let t = TableId { tenant: "acme".into(), database: "lab_acme".into(), table: "results".into() };
        let d = Date { year: 2026, month: 11, day: 27 };
        let a = curated_key(&t, 0, d, "lablake.acme.lab_acme.results", 1, 0, 99);
        let b = curated_key(&t, 0, d, "lablake.acme.lab_acme.results", 1, 100, 1000);
        assert_eq!(
            a,
            "acme/curated/lab_acme/results/dt=2026-11-27/lablake.acme.lab_acme.results-p00001-00000000000000000000-00000000000000000099.parquet"
        );
        assert!(a < b);
        assert!(a.starts_with(&curated_prefix(&t, 0)));
        let g2 = curated_key(&t, 2, d, "lablake.acme.lab_acme.results", 1, 0, 99);
        assert!(g2.starts_with("acme/g2/curated/lab_acme/results/dt=") && g2.ends_with(a.rsplit('/').next().unwrap()));
        assert!(!g2.starts_with(&curated_prefix(&t, 0)) && !a.starts_with(&curated_prefix(&t, 2)));
        assert_eq!(parse_curated_key(&g2), parse_curated_key(&a));
        let f = parse_curated_key(&b).unwrap();
        assert_eq!(f, CuratedFile { topic: "lablake.acme.lab_acme.results", partition: 1, first: 100, last: 1000 });
        let odd = curated_key(&t, 0, d, "lablake.a-p00001-b.c", 12, 7, 9);
        assert_eq!(parse_curated_key(&odd).unwrap().topic, "lablake.a-p00001-b.c");
        assert_eq!(parse_curated_key(&odd).unwrap().partition, 12);
        assert!(parse_curated_key("acme/curated/x/y/dt=2026-01-01/notes.parquet").is_none());
        assert!(parse_curated_key("acme/curated/x/y/dt=2026-01-01/t-p00001-1-2.json").is_none());
    }

    #[test]
    fn config_is_validated() {
        let base = LakeConfig {
            bucket: "b".into(),
            bucket_per_tenant: None,
            endpoint: None,
            region: "us-east-1".into(),
            allow_http: false,
            zstd_level: 3,
            max_retries: 3,
        };
        assert!(Lake::new(base.clone()).is_ok());
        let e = Lake::new(LakeConfig { endpoint: Some("http://x".into()), ..base.clone() }).err().unwrap();
        assert!(e.to_string().contains("endpoint"));
        let e =
            Lake::new(LakeConfig { endpoint: Some("ftp://x".into()), allow_http: true, ..base.clone() }).err().unwrap();
        assert!(e.to_string().contains("endpoint"));
        let e = Lake::new(LakeConfig { bucket_per_tenant: Some("x".into()), ..base.clone() }).err().unwrap();
        assert!(e.to_string().contains("bucket_per_tenant"));
        let l = Lake::new(LakeConfig { bucket_per_tenant: Some("lablake-{tenant}".into()), ..base }).unwrap();
        assert_eq!(l.bucket_of("acme"), "lablake-acme");
    }
}

#[cfg(test)]
mod parquet_tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn parquet_round_trip_keeps_schema_metadata_and_is_deterministic() {
        let schema = Arc::new(
            Schema::new(vec![Field::new("id", DataType::Int64, true)])
                .with_metadata(HashMap::from([("lablake.primary_key".to_owned(), "id".to_owned())])),
        );
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        let a = encode_parquet(&batch, 3).unwrap();
        let b = encode_parquet(&batch, 3).unwrap();
        assert_eq!(a, b);
        let back = decode_parquet(a).unwrap();
        assert_eq!(back[0].schema().metadata().get("lablake.primary_key").map(String::as_str), Some("id"));
        assert_eq!(back[0].num_rows(), 3);
    }
}
