//! Table selection and tenant resolution.
//!
//! Two rules resolve the tenant of a change:
//!
//! * **Schema per tenant** (`SchemaPattern`): the database name matches a
//!   pattern with one `{tenant}` placeholder, e.g. `lab_{tenant}` makes
//!   database `lab_acme` belong to tenant `acme`. Databases that do not match
//!   are not captured.
//! * **Tenant column** (`Column`): shared tables carry the tenant in a column,
//!   e.g. `tenant_id`; each row goes to the tenant named by its value.
//!
//! Tenant names must match `[a-z0-9][a-z0-9_-]{0,62}` — they become topic
//! names and object-store prefixes, so they are validated, never rewritten
//! (rewriting could merge two tenants).

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::{ModelError, Value};

/// How the tenant of a change is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRule {
    SchemaPattern { prefix: String, suffix: String },
    Column { column: String },
}

impl TenantRule {
    /// A schema-per-tenant rule from a pattern such as `lab_{tenant}`.
    pub fn schema_pattern(pattern: &str) -> Result<Self, ModelError> {
        let (prefix, suffix) = pattern.split_once("{tenant}").ok_or_else(|| ModelError::InvalidRule {
            rule: pattern.to_owned(),
            reason: "must contain `{tenant}` once".into(),
        })?;
        if suffix.contains("{tenant}") {
            return Err(ModelError::InvalidRule {
                rule: pattern.to_owned(),
                reason: "`{tenant}` appears twice".into(),
            });
        }
        Ok(TenantRule::SchemaPattern { prefix: prefix.to_owned(), suffix: suffix.to_owned() })
    }

    /// The tenant of a database under a schema-per-tenant rule; `None` when the
    /// database does not follow the pattern or the rule is a column rule.
    pub fn tenant_of_database(&self, database: &str) -> Option<String> {
        match self {
            TenantRule::SchemaPattern { prefix, suffix } => {
                let t = database.strip_prefix(prefix.as_str())?.strip_suffix(suffix.as_str())?;
                validate_tenant(t).ok().map(|()| t.to_owned())
            }
            TenantRule::Column { .. } => None,
        }
    }

    /// The tenant named by a row value under a column rule.
    pub fn tenant_of_value(value: &Value) -> Result<String, String> {
        let t = match value {
            Value::String(s) | Value::Enum(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Null => return Err("tenant column is NULL".into()),
            _ => return Err("tenant column has an unsupported type".into()),
        };
        validate_tenant(&t)?;
        Ok(t)
    }
}

/// Checks that a tenant name is usable as a topic segment and a prefix.
pub fn validate_tenant(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 63
        && t.bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'_' || b == b'-')));
    if ok { Ok(()) } else { Err("tenant name must match [a-z0-9][a-z0-9_-]{0,62}".into()) }
}

/// Include/exclude glob patterns over `database.table`.
#[derive(Debug, Clone)]
pub struct TableFilter {
    include: GlobSet,
    exclude: GlobSet,
}

impl TableFilter {
    /// Patterns are globs over `database.table`, e.g. `lab_*.orders` or `*.tmp_*`.
    /// An empty include list includes everything.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, ModelError> {
        let build = |patterns: &[String], default_all: bool| -> Result<GlobSet, ModelError> {
            let mut b = GlobSetBuilder::new();
            for p in patterns {
                let g = Glob::new(p).map_err(|e| ModelError::InvalidRule { rule: p.clone(), reason: e.to_string() })?;
                b.add(g);
            }
            if patterns.is_empty() && default_all {
                b.add(Glob::new("*").map_err(|e| ModelError::InvalidRule { rule: "*".into(), reason: e.to_string() })?);
            }
            b.build().map_err(|e| ModelError::InvalidRule { rule: patterns.join(","), reason: e.to_string() })
        };
        Ok(TableFilter { include: build(include, true)?, exclude: build(exclude, false)? })
    }

    pub fn matches(&self, database: &str, table: &str) -> bool {
        let name = format!("{database}.{table}");
        self.include.is_match(&name) && !self.exclude.is_match(&name)
    }
}

/// Which tables are user-defined (customer-created, discovered at run
/// time): globs over the table name, e.g. `udt_*`. They are processed in
/// their own lane (snapshot worker, consumer group), so a huge one never
/// delays the core tables. No patterns: no user-defined tables.
#[derive(Debug, Clone, Default)]
pub struct UserTableRule {
    set: Option<GlobSet>,
}

impl UserTableRule {
    pub fn new(patterns: &[String]) -> Result<Self, ModelError> {
        if patterns.is_empty() {
            return Ok(UserTableRule { set: None });
        }
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(Glob::new(p).map_err(|e| ModelError::InvalidRule { rule: p.clone(), reason: e.to_string() })?);
        }
        let set = b.build().map_err(|e| ModelError::InvalidRule { rule: patterns.join(","), reason: e.to_string() })?;
        Ok(UserTableRule { set: Some(set) })
    }

    /// Whether any pattern is configured.
    pub fn is_enabled(&self) -> bool {
        self.set.is_some()
    }

    /// Whether `table` (the table name alone) is user-defined.
    pub fn is_user_table(&self, table: &str) -> bool {
        self.set.as_ref().is_some_and(|s| s.is_match(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_pattern_resolves_tenants() {
        let r = TenantRule::schema_pattern("lab_{tenant}").unwrap();
        assert_eq!(r.tenant_of_database("lab_acme").as_deref(), Some("acme"));
        assert_eq!(r.tenant_of_database("lab_Acme"), None);
        assert_eq!(r.tenant_of_database("mysql"), None);
        assert_eq!(r.tenant_of_database("lab_"), None);
        let r = TenantRule::schema_pattern("t_{tenant}_prod").unwrap();
        assert_eq!(r.tenant_of_database("t_x1_prod").as_deref(), Some("x1"));
        assert!(TenantRule::schema_pattern("nothing").is_err());
    }

    #[test]
    fn column_values_must_be_valid_tenants() {
        assert_eq!(TenantRule::tenant_of_value(&Value::String("acme".into())).unwrap(), "acme");
        assert_eq!(TenantRule::tenant_of_value(&Value::Int(42)).unwrap(), "42");
        assert!(TenantRule::tenant_of_value(&Value::String("../x".into())).is_err());
        assert!(TenantRule::tenant_of_value(&Value::Null).is_err());
    }

    #[test]
    fn user_tables_match_on_the_table_name() {
        let r = UserTableRule::new(&["udt_*".into(), "custom_?".into()]).unwrap();
        assert!(r.is_enabled());
        assert!(r.is_user_table("udt_visits") && r.is_user_table("custom_1"));
        assert!(!r.is_user_table("orders") && !r.is_user_table("custom_12"));
        let none = UserTableRule::new(&[]).unwrap();
        assert!(!none.is_enabled() && !none.is_user_table("udt_x"));
        assert!(UserTableRule::new(&["[".into()]).is_err());
    }

    #[test]
    fn filter_includes_and_excludes() {
        let f = TableFilter::new(&["lab_*.*".into()], &["*.tmp_*".into()]).unwrap();
        assert!(f.matches("lab_a", "orders"));
        assert!(!f.matches("lab_a", "tmp_x"));
        assert!(!f.matches("mysql", "user"));
        let all = TableFilter::new(&[], &[]).unwrap();
        assert!(all.matches("x", "y"));
    }
}
