//! The Snowflake side of the end-to-end tests: the emulator's address, a
//! sink configuration, a client and a table read back as text.

use std::collections::BTreeMap;

use lablake_snowflake::{Client, SnowflakeConfig};

use crate::env_or;

/// The Snowflake endpoint (the local emulator by default).
pub fn url() -> String {
    env_or("LABLAKE_SNOWFLAKE_URL", "http://127.0.0.1:28080")
}

/// A `[snowflake]` section loading every tenant into `<prefix><TENANT>` at
/// `url`, with short intervals and retries for tests.
pub fn sink_config_at(prefix: &str, url: &str) -> String {
    format!(
        "[snowflake]\ndatabase_prefix = \"{prefix}\"\ninterval = \"500ms\"\n\
         [snowflake.connection]\naccount = \"lablaketest\"\nuser = \"lablake\"\npassword = \"test\"\n\
         base_url = \"{url}\"\nallow_http = true\nmax_retries = 2\nretry_backoff = \"200ms\"\n"
    )
}

/// A client of [`url`] with the test account.
pub fn client() -> anyhow::Result<Client> {
    let mut c = SnowflakeConfig::new("lablaketest", "lablake");
    c.base_url = Some(url());
    c.allow_http = true;
    c.password = Some("test".to_owned().into());
    Ok(Client::new(c)?)
}

/// Rows of `"<database>"."<schema>"."<table>"` (names upper-cased), keyed by
/// the first column, as column → text (`NULL` for nulls, names as given),
/// only `columns`, rows matching `filter`. A table not created yet has none.
pub async fn table_rows(
    c: &mut Client,
    database: &str,
    schema: &str,
    table: &str,
    columns: &[&str],
    filter: &str,
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let select: Vec<String> = columns.iter().map(|c| format!("\"{}\"", c.to_uppercase())).collect();
    let sql = format!(
        "SELECT {} FROM \"{database}\".\"{}\".\"{}\" WHERE {filter}",
        select.join(", "),
        schema.to_uppercase(),
        table.to_uppercase()
    );
    let r = match c.query(&sql, &[]).await {
        Ok(r) => r,
        Err(lablake_snowflake::SnowflakeError::Query { .. }) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = BTreeMap::new();
    for row in r.rows {
        let m: BTreeMap<String, String> = columns
            .iter()
            .zip(row)
            .map(|(c, v)| ((*c).to_owned(), v.map_or_else(|| "NULL".into(), |v| micros(&v))))
            .collect();
        out.insert(m[columns[0]].clone(), m);
    }
    Ok(out)
}

/// A timestamp read as `seconds.fraction` with the server's fraction digits
/// (the emulator reports nine for a TIMESTAMP(6) column), at microseconds;
/// other values unchanged.
pub fn micros(v: &str) -> String {
    match v.split_once('.') {
        Some((secs, frac))
            if frac.len() > 6
                && frac[6..].bytes().all(|b| b == b'0')
                && secs.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("{secs}.{}", &frac[..6])
        }
        _ => v.to_owned(),
    }
}

/// Waits until every tenant's Snowflake `table` (database `<prefix><TENANT>`,
/// schema `LAB_<TENANT>`) equals the source's in `cols`, every column of every
/// row: polled by row count and sum of the `version` column, then compared row
/// by row. The first of `cols` is the key.
pub async fn await_exact(
    w: &mut crate::World,
    prefix: &str,
    table: &str,
    cols: &[&str],
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let mut c = client()?;
    let deadline = std::time::Instant::now() + timeout;
    for t in w.tenants.clone() {
        let database = format!("{prefix}{}", t.to_uppercase());
        loop {
            w.assert_running()?;
            let expected = w.source_state(&t, table, cols).await?;
            let sums = format!(
                "SELECT COUNT(*) AS N, SUM(\"VERSION\") AS V FROM \"{database}\".\"LAB_{}\".\"{}\"",
                t.to_uppercase(),
                table.to_uppercase()
            );
            let (n, v) = match c.query(&sums, &[]).await {
                Ok(r) => (r.get(0, "n").unwrap_or("0").to_owned(), r.get(0, "v").unwrap_or("0").to_owned()),
                Err(lablake_snowflake::SnowflakeError::Query { .. }) => ("0".to_owned(), "0".to_owned()),
                Err(e) => return Err(e.into()),
            };
            let want: u64 = expected.values().filter_map(|r| r["version"].parse::<u64>().ok()).sum();
            if n == expected.len().to_string() && v == want.to_string() {
                let got = table_rows(&mut c, &database, &format!("lab_{t}"), table, cols, "TRUE").await?;
                if got == expected {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let diff = crate::state_diff(&expected, &got, "snowflake");
                    anyhow::bail!("{t}: Snowflake differs from the source in content:\n{diff}\n{}", w.log_tail());
                }
            } else if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{t}: Snowflake has {n} rows (version sum {v}), the source {} ({want}) after {} s:\n{}",
                    expected.len(),
                    timeout.as_secs(),
                    w.log_tail()
                );
            }
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        }
    }
    Ok(())
}
