//! information_schema lookups: the fallback for minimal TABLE_MAP metadata
//! and the source of MariaDB JSON columns. Cached by the decoder per table
//! and invalidated by DDL.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::MysqlError;
use crate::decode::{CatalogColumn, CatalogTable, Flavor};

/// Reads the columns, primary key and (MariaDB) `json_valid` checks of one table.
pub(crate) async fn fetch(
    conn: &mut Conn,
    database: &str,
    table: &str,
    flavor: Flavor,
) -> Result<CatalogTable, MysqlError> {
    let q = |context: &str| {
        let context = format!("information_schema {context} of {database}.{table}");
        move |source| MysqlError::Query { context, source }
    };
    let cols: Vec<(String, String, String, Option<String>, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, IS_NULLABLE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (database, table),
        )
        .await
        .map_err(q("columns"))?;
    let primary_key: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
            (database, table),
        )
        .await
        .map_err(q("primary key"))?;
    let json_checked: Vec<String> = if flavor == Flavor::MariaDb {
        let clauses: Vec<String> = conn
            .exec(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
                (database, table),
            )
            .await
            .map_err(q("check constraints"))?;
        clauses.iter().filter_map(|c| json_valid_column(c)).collect()
    } else {
        Vec::new()
    };
    let columns = cols
        .into_iter()
        .map(|(name, data_type, column_type, charset, nullable)| {
            let is_json = data_type.eq_ignore_ascii_case("json") || json_checked.contains(&name);
            CatalogColumn { name, data_type, column_type, charset, is_json, nullable: nullable == "YES" }
        })
        .collect();
    Ok(CatalogTable { columns, primary_key })
}

/// The column of a `json_valid(`col`)` check clause (MariaDB's JSON alias).
pub(crate) fn json_valid_column(clause: &str) -> Option<String> {
    let c = clause.trim();
    let inner = c.get(..11).filter(|p| p.eq_ignore_ascii_case("json_valid("))?;
    let rest = c[inner.len()..].strip_suffix(')')?.trim();
    let name = match rest.strip_prefix('`').and_then(|r| r.strip_suffix('`')) {
        Some(quoted) => quoted.replace("``", "`"),
        None if rest.chars().all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '$') => rest.to_owned(),
        None => return None,
    };
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_valid_clauses() {
        assert_eq!(json_valid_column("json_valid(`j`)").as_deref(), Some("j"));
        assert_eq!(json_valid_column("JSON_VALID(`we``ird`)").as_deref(), Some("we`ird"));
        assert_eq!(json_valid_column("json_valid(doc)").as_deref(), Some("doc"));
        assert_eq!(json_valid_column("json_valid(`a`) and `b` > 0"), None);
        assert_eq!(json_valid_column("`a` > 0"), None);
    }
}
