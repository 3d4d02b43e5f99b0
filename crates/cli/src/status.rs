//! `lablake status`: per tenant and table, what is curated and how far behind.

use anyhow::Context;
use lablake_checkpoint::{CheckpointStore, Generations, SinkCheckpoint, TableStatus};

/// Renders status rows as an aligned text table: what is curated and how far
/// behind the source, and — with a warehouse sink — what is loaded into
/// Snowflake and how far behind the source that is.
pub fn render(rows: &[TableStatus], sinks: &[SinkCheckpoint], now_ms: i64) -> String {
    let behind = |ts: i64| if ts > 0 { format!("{:.1}s", (now_ms - ts) as f64 / 1000.0) } else { "-".into() };
    let mut out = String::from(
        "TENANT           SOURCE     DATABASE             TABLE                ROWS       FILES  DLQ    BEHIND     \
         SF-FILES SF-ROWS    SF-BEHIND\n",
    );
    for r in rows {
        let sink = sinks
            .iter()
            .find(|s| *s.table.tenant == *r.tenant && *s.table.database == *r.database && *s.table.table == *r.table);
        let (files, loaded, lag) = match sink {
            Some(s) => (s.files.to_string(), s.rows.to_string(), behind(s.max_commit_ts_ms)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<16} {:<10} {:<20} {:<20} {:<10} {:<6} {:<6} {:<10} {:<8} {:<10} {}\n",
            r.tenant,
            r.source,
            r.database,
            r.table,
            r.rows,
            r.files,
            r.dead_lettered,
            behind(r.max_commit_ts_ms),
            files,
            loaded,
            lag
        ));
    }
    out
}

/// Status rows of a tenant (or all), sorted, each tenant's from its active
/// generation; and the generations of every tenant listed.
pub async fn collect<S: CheckpointStore>(
    store: &S,
    tenant: Option<&str>,
) -> anyhow::Result<(Vec<TableStatus>, Vec<Generations>)> {
    // Every tenant starts in generation 0, so its rows there list them all.
    let first = store.in_generation(0).status(tenant).await?;
    let mut tenants: Vec<String> = first.iter().map(|r| r.tenant.clone()).collect();
    tenants.sort();
    tenants.dedup();
    let mut rows = Vec::new();
    let mut gens = Vec::new();
    for t in tenants {
        let g = store.load_generations(&t).await?;
        if g.active == 0 {
            rows.extend(first.iter().filter(|r| r.tenant == t).cloned());
        } else {
            rows.extend(store.in_generation(g.active).status(Some(&t)).await?);
        }
        gens.push(g);
    }
    rows.sort_by(|a, b| {
        (&a.tenant, &a.source, &a.database, &a.table).cmp(&(&b.tenant, &b.source, &b.database, &b.table))
    });
    Ok((rows, gens))
}

/// The generations of the tenants that have more than generation 0: which is
/// active, and each one's state, code version and configuration hash.
pub fn render_generations(gens: &[Generations]) -> String {
    let mut out = String::new();
    for g in gens.iter().filter(|g| !g.records.is_empty()) {
        if out.is_empty() {
            out.push_str("\nTENANT           GEN    STATE      VERSION    CONFIG            SINCE\n");
        }
        for r in &g.records {
            out.push_str(&format!(
                "{:<16} {:<6} {:<10} {:<10} {:<17} {}\n",
                g.tenant,
                if r.generation == g.active { format!("{}*", r.generation) } else { r.generation.to_string() },
                r.state.as_str(),
                if r.code_version.is_empty() { "-" } else { &r.code_version },
                if r.config_hash.is_empty() { "-" } else { &r.config_hash },
                r.updated_ms
            ));
        }
    }
    out
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
pub async fn lake_table(
    lake: &lablake_lake::Lake,
    table: &lablake_model::TableId,
    data_gen: u32,
) -> anyhow::Result<LakeTable> {
    use arrow::array::AsArray;
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use std::collections::HashMap;

    let prefix = lablake_lake::curated_prefix(table, data_gen);
    let keys = lake.list(&table.tenant, &prefix).await?;
    let mut latest: HashMap<String, (String, bool)> = HashMap::new();
    let mut change_rows = 0;
    for key in &keys {
        let bytes = lake.get(&table.tenant, key).await?;
        for batch in lablake_lake::decode_parquet(bytes)? {
            let schema = batch.schema();
            let pk = lablake_curate::primary_key_indices(&schema);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_curated_and_loaded_lag() {
        let row = TableStatus {
            tenant: "acme".into(),
            source: "main".into(),
            database: "lab_acme".into(),
            table: "orders".into(),
            rows: 10,
            files: 2,
            dead_lettered: 0,
            max_commit_ts_ms: 9_000,
            max_position: String::new(),
            updated_at_ms: 0,
        };
        let t = lablake_model::TableId { tenant: "acme".into(), database: "lab_acme".into(), table: "orders".into() };
        let mut sink = SinkCheckpoint::new(&t);
        sink.files = 1;
        sink.rows = 7;
        sink.max_commit_ts_ms = 4_000;
        let text = render(std::slice::from_ref(&row), &[sink], 10_000);
        let line = text.lines().nth(1).unwrap_or_default();
        assert!(line.contains(" 1.0s") && line.ends_with("1        7          6.0s"), "{text}");
        let text = render(&[row], &[], 10_000);
        assert!(text.lines().nth(1).unwrap_or_default().ends_with("-        -          -"), "{text}");
    }
}
