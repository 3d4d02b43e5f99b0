//! `lablake status`: per tenant and table, what is curated and how far behind.

use anyhow::Context;
use lablake_checkpoint::{CheckpointStore, TableStatus};

/// Renders status rows as an aligned text table.
pub fn render(rows: &[TableStatus], now_ms: i64) -> String {
    let mut out = String::from(
        "TENANT           SOURCE     DATABASE             TABLE                ROWS       FILES  DLQ    BEHIND\n",
    );
    for r in rows {
        let behind = if r.max_commit_ts_ms > 0 {
            format!("{:.1}s", (now_ms - r.max_commit_ts_ms) as f64 / 1000.0)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "{:<16} {:<10} {:<20} {:<20} {:<10} {:<6} {:<6} {}\n",
            r.tenant, r.source, r.database, r.table, r.rows, r.files, r.dead_lettered, behind
        ));
    }
    out
}

/// Status rows of a tenant (or all), sorted.
pub async fn collect<S: CheckpointStore>(store: &S, tenant: Option<&str>) -> anyhow::Result<Vec<TableStatus>> {
    let mut rows = store.status(tenant).await?;
    rows.sort_by(|a, b| {
        (&a.tenant, &a.source, &a.database, &a.table).cmp(&(&b.tenant, &b.source, &b.database, &b.table))
    });
    Ok(rows)
}

/// What the curated lake holds for one table: files, change rows, and live
/// rows after de-duplication by (primary key, `_position`) — the newest change
/// per key wins and deleted keys are dropped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LakeTable {
    pub tenant: String,
    pub database: String,
    pub table: String,
    pub location: String,
    pub files: usize,
    pub change_rows: usize,
    pub live_rows: usize,
}

/// Reads every curated file of a table (test/demo sized tables; it loads the
/// key columns of all files into memory).
pub async fn lake_table(lake: &lablake_lake::Lake, table: &lablake_model::TableId) -> anyhow::Result<LakeTable> {
    use arrow::array::AsArray;
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use std::collections::HashMap;

    let prefix = lablake_lake::curated_prefix(table);
    let keys = lake.list(&table.tenant, &prefix).await?;
    let mut latest: HashMap<String, (String, bool)> = HashMap::new();
    let mut change_rows = 0;
    for key in &keys {
        let bytes = lake.get(&table.tenant, key).await?;
        for batch in lablake_lake::decode_parquet(bytes)? {
            let schema = batch.schema();
            let pk: Vec<usize> = schema
                .metadata()
                .get("lablake.primary_key")
                .map(|s| s.split(',').filter_map(|c| schema.index_of(c).ok()).collect())
                .unwrap_or_default();
            let pos = batch.column_by_name(lablake_curate::meta::POSITION).context("file without _position")?;
            let op = batch.column_by_name(lablake_curate::meta::OP).context("file without _op")?;
            let (pos, op) = (pos.as_string::<i32>(), op.as_string::<i32>());
            let opts = FormatOptions::default();
            let fmts: Vec<ArrayFormatter<'_>> = pk
                .iter()
                .map(|i| ArrayFormatter::try_new(batch.column(*i).as_ref(), &opts))
                .collect::<Result<_, _>>()?;
            for r in 0..batch.num_rows() {
                change_rows += 1;
                let k: Vec<String> = fmts.iter().map(|f| f.value(r).to_string()).collect();
                let k = k.join("\u{1f}");
                let p = pos.value(r);
                let newer = latest.get(&k).is_none_or(|(old, _)| old.as_str() < p);
                if newer {
                    latest.insert(k, (p.to_owned(), op.value(r) == "d"));
                }
            }
        }
    }
    Ok(LakeTable {
        tenant: table.tenant.to_string(),
        database: table.database.to_string(),
        table: table.table.to_string(),
        location: format!("s3://{}/{}", lake.bucket_of(&table.tenant), prefix),
        files: keys.len(),
        change_rows,
        live_rows: latest.values().filter(|(_, deleted)| !deleted).count(),
    })
}
