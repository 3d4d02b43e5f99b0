//! Whether PostgreSQL tells which tenant a row left.
//!
//! Under the tenant-column rule a row moves between tenants when an UPDATE
//! changes its tenant column. PostgreSQL sends the old row of an UPDATE only
//! as far as the table's replica identity covers it: with `REPLICA IDENTITY
//! FULL` the whole old row (`O`) comes with every UPDATE and DELETE; with the
//! default identity (the primary key) or `USING INDEX` only the old key
//! (`K`), and on UPDATE only when the key changed; with `NOTHING` nothing.
//! So the old tenant is known exactly when the identity is FULL or its key
//! contains the tenant column — then an update without an old tuple kept
//! its tenant, and one with an old tuple names the tenant it left.
//!
//! Any other selected table with the tenant column is refused with
//! [`PgError::ServerConfig`] (setting `replica_identity`): at start for the
//! tables the publication covers (`check_publication`), and on every
//! Relation message for tables created or altered later
//! ([`check_relation`], which stops the source). A moved row is never left
//! behind in its old tenant silently. Tables without the tenant column are
//! not refused: each of their rows is unresolved (dead-lettered) anyway.
//!
//! The stream is decoded with the catalog as it was when each change was
//! written, so changes written before the fix still carry the old identity:
//! fix the table before writing to it.

use tokio_postgres::Client;

use lablake_model::tenant::TenantRule;

use crate::config::PgSourceConfig;
use crate::error::PgError;
use crate::pgoutput::Relation;
use crate::source::{connection, pg_reason};

/// Checks a Relation message's table (already known to be selected)
/// against the tenant column `column`.
pub fn check_relation(rel: &Relation, column: &str) -> Result<(), PgError> {
    let Some(col) = rel.columns.iter().find(|c| c.name == column) else { return Ok(()) };
    let has_key = rel.columns.iter().any(|c| c.key);
    check(&rel.namespace, &rel.name, rel.replica_identity, has_key, col.key, column)
}

/// The rule for one table that has the tenant column: `identity` is
/// `pg_class.relreplident` (`d`, `n`, `f`, `i`), `has_key` whether the
/// identity has key columns at all, `tenant_in_key` whether the tenant
/// column is one of them.
pub fn check(
    schema: &str,
    table: &str,
    identity: u8,
    has_key: bool,
    tenant_in_key: bool,
    column: &str,
) -> Result<(), PgError> {
    if identity == b'f' || (tenant_in_key && identity != b'n') {
        return Ok(());
    }
    let what = match identity {
        b'd' if has_key => "DEFAULT, the primary key",
        b'd' => "DEFAULT, and no primary key",
        b'i' => "USING INDEX",
        b'n' => "NOTHING",
        _ => "unknown",
    };
    let name = format!("{}.{}", quote(schema), quote(table));
    Err(PgError::ServerConfig {
        setting: "replica_identity".into(),
        reason: format!(
            "table {name} has the tenant column `{column}` outside its replica identity ({what}), so PostgreSQL \
             does not send the tenant an updated or deleted row had and a row moving between tenants would stay \
             behind in the old one: run `ALTER TABLE {name} REPLICA IDENTITY FULL`, or give it a primary key \
             (or a REPLICA IDENTITY USING INDEX index) that includes `{column}`"
        ),
    })
}

/// At start, under the tenant-column rule: every table the publication
/// covers that the filter selects and that has the tenant column must have
/// an identity covering it. Names every refused table (the first in full).
pub(crate) async fn check_publication(catalog: &Client, cfg: &PgSourceConfig) -> Result<(), PgError> {
    let dcfg = cfg.decoder_config()?;
    let TenantRule::Column { column } = &dcfg.tenant else { return Ok(()) };
    // The identity's key columns: the primary key (DEFAULT) or the chosen
    // index (USING INDEX); FULL covers every column, NOTHING none.
    let rows = catalog
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND \
                 CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END), \
               a.attnum = ANY (coalesce((SELECT i.indkey::int2[] FROM pg_index i WHERE i.indrelid = c.oid AND \
                 CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END \
                 LIMIT 1), '{}'::int2[])) \
             FROM pg_publication_tables p \
             JOIN pg_namespace n ON n.nspname = p.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE p.pubname = $1 ORDER BY 1, 2",
            &[&cfg.publication, column],
        )
        .await
        .map_err(|e| connection(pg_reason(&e)))?;
    let mut refused = Vec::new();
    for r in &rows {
        let (schema, table, identity): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if !dcfg.filter.matches(&schema, &table) {
            continue;
        }
        let identity = identity.bytes().next().unwrap_or(b'd');
        if let Err(e) = check(&schema, &table, identity, r.get(3), r.get(4), column) {
            refused.push((format!("{schema}.{table}"), e));
        }
    }
    let mut refused = refused.into_iter();
    let Some((_, first)) = refused.next() else { return Ok(()) };
    let others: Vec<String> = refused.map(|(name, _)| name).collect();
    match first {
        PgError::ServerConfig { setting, reason } if !others.is_empty() => Err(PgError::ServerConfig {
            setting,
            reason: format!("{reason}; the same holds for {}", others.join(", ")),
        }),
        e => Err(e),
    }
}

/// An identifier as SQL needs it: bare when lower-case letters, digits and
/// `_` (not starting with a digit), else double-quoted.
fn quote(ident: &str) -> String {
    let bare = ident.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && ident.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if bare { ident.to_owned() } else { format!("\"{}\"", ident.replace('"', "\"\"")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_covering_the_tenant_column_pass() {
        // (identity, has key, tenant in key, passes)
        for (identity, has_key, in_key, ok) in [
            (b'f', false, false, true),
            (b'f', true, false, true),
            (b'd', true, true, true),
            (b'i', true, true, true),
            (b'd', true, false, false),
            (b'd', false, false, false),
            (b'i', true, false, false),
            (b'n', false, false, false),
            (b'n', true, true, false),
        ] {
            let r = check("lab", "shared", identity, has_key, in_key, "tenant_id");
            assert_eq!(r.is_ok(), ok, "{} {has_key} {in_key}", char::from(identity));
            if let Err(e) = r {
                let text = e.to_string();
                assert!(matches!(e, PgError::ServerConfig { .. }) && !e.is_retryable());
                assert!(text.contains("ALTER TABLE lab.shared REPLICA IDENTITY FULL"), "{text}");
                assert!(text.contains("`tenant_id`"), "{text}");
            }
        }
    }

    #[test]
    fn names_are_quoted_when_sql_needs_it() {
        assert_eq!(quote("lab_x1"), "lab_x1");
        assert_eq!(quote("Lab"), "\"Lab\"");
        assert_eq!(quote("1x"), "\"1x\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        let e = check("My Schema", "t", b'd', true, false, "tenant_id").unwrap_err();
        assert!(e.to_string().contains("ALTER TABLE \"My Schema\".t REPLICA IDENTITY FULL"), "{e}");
    }
}
