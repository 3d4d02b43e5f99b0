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
//!
//! [`route`] applies a rule to one row change — the one routing function of
//! every source — and [`TenantNames`] interns the names it resolves.

use std::collections::HashMap;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::{ChangeEvent, ModelError, Op, SourceInfo, TableId, TableSchema, Value};

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
        let mut digits = itoa::Buffer::new();
        let t = tenant_text(value, &mut digits)?;
        validate_tenant(t)?;
        Ok(t.to_owned())
    }
}

/// The text of a tenant-column value (not yet validated). Reasons name the
/// problem, never the value.
fn tenant_text<'a>(value: &'a Value, digits: &'a mut itoa::Buffer) -> Result<&'a str, String> {
    match value {
        Value::String(s) | Value::Enum(s) => Ok(s),
        Value::Int(i) => Ok(digits.format(*i)),
        Value::UInt(u) => Ok(digits.format(*u)),
        Value::Null => Err("tenant column is NULL".into()),
        Value::Unchanged => Err("tenant column not sent (unchanged TOAST value) and no old row".into()),
        _ => Err("tenant column has an unsupported type".into()),
    }
}

/// How many names each map of [`TenantNames`] holds before it is cleared.
const MAX_TENANT_NAMES: usize = 10_000;

/// The tenant names a source has resolved, interned: every change of a
/// tenant shares one `Arc<str>`, so routing a row allocates no name once its
/// tenant was seen. Keyed by database name under the schema rule and by
/// column value under the column rule; each map is cleared when it reaches
/// 10,000 names, so memory stays bounded however many tenants (or invalid
/// values) pass.
#[derive(Debug, Default)]
pub struct TenantNames {
    /// Schema rule: the tenant (or none) of each database name.
    by_database: HashMap<String, Option<Arc<str>>>,
    /// Column rule: each valid tenant value seen.
    by_value: HashMap<String, Arc<str>>,
}

impl TenantNames {
    pub fn new() -> Self {
        Self::default()
    }

    /// The tenant of `database` under a schema rule (`None`: the database
    /// follows no tenant pattern, or `rule` is a column rule).
    pub fn of_database(&mut self, rule: &TenantRule, database: &str) -> Option<Arc<str>> {
        if let Some(t) = self.by_database.get(database) {
            return t.clone();
        }
        if self.by_database.len() >= MAX_TENANT_NAMES {
            self.by_database.clear();
        }
        let t = rule.tenant_of_database(database).map(Arc::<str>::from);
        self.by_database.insert(database.to_owned(), t.clone());
        t
    }

    /// The tenant named by a tenant-column value, or why it names none
    /// (NULL, unsupported type, invalid name; never the value itself).
    pub fn of_value(&mut self, value: &Value) -> Result<Arc<str>, String> {
        let mut digits = itoa::Buffer::new();
        let t = tenant_text(value, &mut digits)?;
        if let Some(a) = self.by_value.get(t) {
            return Ok(a.clone());
        }
        validate_tenant(t)?;
        if self.by_value.len() >= MAX_TENANT_NAMES {
            self.by_value.clear();
        }
        let a: Arc<str> = t.into();
        self.by_value.insert(t.to_owned(), a.clone());
        Ok(a)
    }
}

/// A row change routed to one tenant. `before`/`after` are the images
/// [`route`] was given, moved (or one of them dropped), never copied.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutedChange {
    pub tenant: Arc<str>,
    pub op: Op,
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
}

impl RoutedChange {
    /// The change event of `database.table` (both sources build their events here).
    pub fn into_event(
        self,
        database: &Arc<str>,
        table: &Arc<str>,
        schema: &Arc<TableSchema>,
        source: SourceInfo,
        ts_ms: i64,
    ) -> ChangeEvent {
        ChangeEvent {
            table: TableId { tenant: self.tenant, database: database.clone(), table: table.clone() },
            op: self.op,
            schema: schema.clone(),
            before: self.before,
            after: self.after,
            source,
            ts_ms,
        }
    }
}

/// The tenant a row that no tenant owns is filed under (its dead-letter
/// topic and the tenant of its envelope).
pub const UNRESOLVED_TENANT: &str = "_unresolved";

/// A row change (or the part of it) [`route`] found no tenant for: why (the
/// reason names no values) and the images, kept so the row can be sent to
/// the dead-letter topic whole and redriven once its tenant is fixed.
#[derive(Debug, Clone, PartialEq)]
pub struct Unrouted {
    pub reason: String,
    pub op: Op,
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
}

impl Unrouted {
    fn reason(reason: String, op: Op) -> Self {
        Unrouted { reason, op, before: None, after: None }
    }

    /// The change event of `database.table` under the tenant
    /// [`UNRESOLVED_TENANT`]: the whole change, for the dead-letter topic.
    pub fn into_event(
        self,
        database: &Arc<str>,
        table: &Arc<str>,
        schema: &Arc<TableSchema>,
        source: SourceInfo,
        ts_ms: i64,
    ) -> ChangeEvent {
        let change =
            RoutedChange { tenant: UNRESOLVED_TENANT.into(), op: self.op, before: self.before, after: self.after };
        change.into_event(database, table, schema, source, ts_ms)
    }
}

/// One output of [`route`].
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// A change for one tenant.
    Change(RoutedChange),
    /// The row (or part of it) cannot be routed.
    Unresolved(Unrouted),
}

/// What [`route`] made of one row change: up to two changes, then at most
/// one unresolved reason — an iterator over them in that order. Empty when
/// the change is not captured (schema rule, database of no tenant).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Routed {
    changes: [Option<RoutedChange>; 2],
    unresolved: Option<Unrouted>,
}

impl Routed {
    fn one(change: RoutedChange) -> Self {
        Routed { changes: [Some(change), None], unresolved: None }
    }

    fn unresolved(unrouted: Unrouted) -> Self {
        Routed { changes: [None, None], unresolved: Some(unrouted) }
    }

    /// Calls `f` with each output in order and a context: a clone of `ctx`
    /// for every output but the last, `ctx` itself for the last. A source
    /// passes its change's `SourceInfo`, so the single change of the common
    /// case takes it without a copy.
    pub fn each_with<C: Clone>(mut self, ctx: C, mut f: impl FnMut(Route, C)) {
        let mut next = self.next();
        while let Some(current) = next {
            next = self.next();
            if next.is_none() {
                f(current, ctx);
                return;
            }
            f(current, ctx.clone());
        }
    }
}

impl Iterator for Routed {
    type Item = Route;

    fn next(&mut self) -> Option<Route> {
        match self.changes.iter_mut().find_map(Option::take) {
            Some(c) => Some(Route::Change(c)),
            None => self.unresolved.take().map(Route::Unresolved),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.changes.iter().filter(|c| c.is_some()).count() + usize::from(self.unresolved.is_some());
        (n, Some(n))
    }
}

impl ExactSizeIterator for Routed {}

/// Why a TRUNCATE of a table shared by tenants produces no change.
pub const TRUNCATE_SHARED: &str = "TRUNCATE of a table shared by tenants (tenant column) is not propagated";

/// Routes one row change of a captured table (`database`, `schema`) to its
/// tenant(s) under `rule`. Pure; the images are moved into the output.
///
/// * **Schema rule**: the tenant of `database`; none → not captured (empty).
/// * **Column rule**: the tenant named by the tenant column of the before
///   image (when there is one) and of the after image:
///   * insert / snapshot read → the after image's tenant;
///   * delete → the before image's tenant;
///   * update, same tenant → an update there; an update without a before
///     image did not change tenant and stays in the after image's
///     (PostgreSQL sends the old row only when its replica-identity key
///     changed, and the source refuses tables whose identity key does not
///     hold the tenant column);
///   * update moving the row → a **delete** (before image only) in the old
///     tenant, then a **create** (after image only) in the new one: neither
///     tenant sees the other's image;
///   * update to a NULL/invalid tenant → the old tenant's delete, then
///     unresolved; from an invalid tenant → a create in the new tenant;
///   * an image without a valid tenant otherwise, a table without the
///     tenant column, or a TRUNCATE (which names no rows, so no tenant) →
///     unresolved.
///
/// An after image whose tenant column is [`Value::Unchanged`] (a PostgreSQL
/// TOAST value not sent) keeps the before image's tenant.
pub fn route(
    names: &mut TenantNames,
    rule: &TenantRule,
    database: &str,
    schema: &TableSchema,
    op: Op,
    before: Option<Vec<Value>>,
    after: Option<Vec<Value>>,
) -> Routed {
    let column = match rule {
        TenantRule::SchemaPattern { .. } => {
            return match names.of_database(rule, database) {
                Some(tenant) => Routed::one(RoutedChange { tenant, op, before, after }),
                None => Routed::default(),
            };
        }
        TenantRule::Column { column } => column,
    };
    if op == Op::Truncate {
        return Routed::unresolved(Unrouted::reason(TRUNCATE_SHARED.into(), op));
    }
    let Some(idx) = schema.column_index(column) else {
        return Routed::unresolved(Unrouted {
            reason: format!("table has no tenant column `{column}`"),
            op,
            before,
            after,
        });
    };
    let mut tenant_of = |image: Option<&Vec<Value>>| {
        image.map(|row| match row.get(idx) {
            Some(v) => names.of_value(v),
            None => Err("tenant column missing from the row".to_owned()),
        })
    };
    let tb = tenant_of(before.as_ref());
    let ta = match (after.as_ref().and_then(|r| r.get(idx)), &tb) {
        (Some(Value::Unchanged), Some(b)) => Some(b.clone()),
        _ => tenant_of(after.as_ref()),
    };
    let change = |tenant, op, before, after| RoutedChange { tenant, op, before, after };
    match (op, tb, ta) {
        (Op::Update, None, Some(Ok(a))) => Routed::one(change(a, Op::Update, None, after)),
        (Op::Update, Some(Ok(b)), Some(Ok(a))) if a == b => Routed::one(change(a, Op::Update, before, after)),
        (Op::Update, Some(Ok(b)), Some(Ok(a))) => Routed {
            changes: [Some(change(b, Op::Delete, before, None)), Some(change(a, Op::Create, None, after))],
            unresolved: None,
        },
        (Op::Update, Some(Ok(b)), Some(Err(reason))) => {
            // The delete half is the old tenant's; the create half has no tenant.
            let create = Unrouted { reason, op: Op::Create, before: None, after };
            Routed { changes: [Some(change(b, Op::Delete, before, None)), None], unresolved: Some(create) }
        }
        (Op::Update, Some(Err(_)), Some(Ok(a))) => Routed::one(change(a, Op::Create, None, after)),
        (Op::Delete, Some(Ok(b)), _) => Routed::one(change(b, Op::Delete, before, after)),
        (Op::Create | Op::Read, _, Some(Ok(a))) => Routed::one(change(a, op, before, after)),
        (_, tb, ta) => {
            let reason = ta
                .and_then(Result::err)
                .or_else(|| tb.and_then(Result::err))
                .unwrap_or_else(|| "tenant cannot be resolved".to_owned());
            Routed::unresolved(Unrouted { reason, op, before, after })
        }
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
    use std::rc::Rc;

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

    fn shared_schema() -> Arc<TableSchema> {
        use crate::{Column, ColumnType};
        let col = |name: &str, ty| Column { name: name.into(), ty, nullable: true };
        TableSchema::new(
            vec![
                col("id", ColumnType::Int { bytes: 8, unsigned: false }),
                col("tenant_id", ColumnType::String),
                col("v", ColumnType::Int { bytes: 4, unsigned: false }),
            ],
            vec![0],
        )
    }

    /// A row `[id, tenant_id, v]`; `t` is the tenant value.
    fn row(id: i64, t: Value) -> Option<Vec<Value>> {
        Some(vec![Value::Int(id), t, Value::Int(0)])
    }

    fn s(t: &str) -> Value {
        Value::String(t.into())
    }

    /// `op tenant before after` per change (images as `id/tenant value`,
    /// `-` when absent), `unresolved: reason` per reason.
    fn render(routed: Routed) -> Vec<String> {
        let img = |r: &Option<Vec<Value>>| match r.as_deref() {
            None => "-".to_owned(),
            Some([Value::Int(id), t, ..]) => match t {
                Value::String(t) => format!("{id}/{t}"),
                other => format!("{id}/{other:?}"),
            },
            Some(other) => format!("{other:?}"),
        };
        routed
            .map(|r| match r {
                Route::Change(c) => format!("{} {} {} {}", c.op.code(), c.tenant, img(&c.before), img(&c.after)),
                Route::Unresolved(u) => {
                    format!("unresolved: {} ({} {} {})", u.reason, u.op.code(), img(&u.before), img(&u.after))
                }
            })
            .collect()
    }

    /// `(name, rule, database, op, before, after, expected outputs)`.
    type Case<'a> = (&'a str, &'a TenantRule, &'a str, Op, Option<Vec<Value>>, Option<Vec<Value>>, Vec<String>);

    #[test]
    fn route_covers_every_case_of_both_rules() {
        let schema_rule = TenantRule::schema_pattern("lab_{tenant}").unwrap();
        let column_rule = TenantRule::Column { column: "tenant_id".into() };
        let other_column = TenantRule::Column { column: "org".into() };
        let invalid = "tenant name must match [a-z0-9][a-z0-9_-]{0,62}";
        let null = "tenant column is NULL";
        #[rustfmt::skip]
        let cases: Vec<Case<'_>> = vec![
            ("schema: match", &schema_rule, "lab_acme", Op::Update, row(1, s("x")), row(1, s("y")),
                vec!["u acme 1/x 1/y".into()]),
            ("schema: no match", &schema_rule, "mysql", Op::Create, None, row(1, s("x")), vec![]),
            ("schema: invalid tenant in the name", &schema_rule, "lab_Acme", Op::Create, None, row(1, s("x")), vec![]),
            ("schema: truncate", &schema_rule, "lab_acme", Op::Truncate, None, None, vec!["t acme - -".into()]),
            ("column: insert", &column_rule, "db", Op::Create, None, row(1, s("acme")),
                vec!["c acme - 1/acme".into()]),
            ("column: snapshot read", &column_rule, "db", Op::Read, None, row(1, s("acme")),
                vec!["r acme - 1/acme".into()]),
            ("column: insert, integer tenant", &column_rule, "db", Op::Create, None, row(1, Value::Int(42)),
                vec!["c 42 - 1/Int(42)".into()]),
            ("column: insert, NULL tenant", &column_rule, "db", Op::Create, None, row(1, Value::Null),
                vec![format!("unresolved: {null} (c - 1/Null)")]),
            ("column: insert, invalid tenant", &column_rule, "db", Op::Create, None, row(1, s("Bad Name")),
                vec![format!("unresolved: {invalid} (c - 1/Bad Name)")]),
            ("column: insert, unsupported type", &column_rule, "db", Op::Create, None, row(1, Value::Double(1.0)),
                vec!["unresolved: tenant column has an unsupported type (c - 1/Double(1.0))".into()]),
            ("column: update, same tenant", &column_rule, "db", Op::Update, row(1, s("acme")), row(1, s("acme")),
                vec!["u acme 1/acme 1/acme".into()]),
            ("column: update without a before image", &column_rule, "db", Op::Update, None, row(1, s("acme")),
                vec!["u acme - 1/acme".into()]),
            ("column: update moving tenants", &column_rule, "db", Op::Update, row(1, s("acme")), row(1, s("globex")),
                vec!["d acme 1/acme -".into(), "c globex - 1/globex".into()]),
            ("column: update to NULL", &column_rule, "db", Op::Update, row(1, s("acme")), row(1, Value::Null),
                vec!["d acme 1/acme -".into(), format!("unresolved: {null} (c - 1/Null)")]),
            ("column: update to invalid", &column_rule, "db", Op::Update, row(1, s("acme")), row(1, s("../x")),
                vec!["d acme 1/acme -".into(), format!("unresolved: {invalid} (c - 1/../x)")]),
            ("column: update from invalid", &column_rule, "db", Op::Update, row(1, s("Bad")), row(1, s("acme")),
                vec!["c acme - 1/acme".into()]),
            ("column: update from NULL", &column_rule, "db", Op::Update, row(1, Value::Null), row(1, s("acme")),
                vec!["c acme - 1/acme".into()]),
            ("column: update, both invalid", &column_rule, "db", Op::Update, row(1, Value::Null), row(1, s("Bad")),
                vec![format!("unresolved: {invalid} (u 1/Null 1/Bad)")]),
            ("column: update, tenant value not sent (TOAST)", &column_rule, "db", Op::Update, row(1, s("acme")),
                row(1, Value::Unchanged), vec!["u acme 1/acme 1/Unchanged".into()]),
            ("column: update, tenant not sent, no old row", &column_rule, "db", Op::Update, None,
                row(1, Value::Unchanged),
                vec!["unresolved: tenant column not sent (unchanged TOAST value) and no old row (u - 1/Unchanged)".into()]),
            ("column: delete", &column_rule, "db", Op::Delete, row(1, s("acme")), None, vec!["d acme 1/acme -".into()]),
            ("column: delete, invalid tenant", &column_rule, "db", Op::Delete, row(1, s("Bad")), None,
                vec![format!("unresolved: {invalid} (d 1/Bad -)")]),
            ("column: delete, NULL tenant", &column_rule, "db", Op::Delete, row(1, Value::Null), None,
                vec![format!("unresolved: {null} (d 1/Null -)")]),
            ("column: delete without a before image", &column_rule, "db", Op::Delete, None, None,
                vec!["unresolved: tenant cannot be resolved (d - -)".into()]),
            ("column: short row", &column_rule, "db", Op::Create, None, Some(vec![Value::Int(1)]),
                vec!["unresolved: tenant column missing from the row (c - [Int(1)])".into()]),
            ("column: missing tenant column", &other_column, "db", Op::Create, None, row(1, s("acme")),
                vec!["unresolved: table has no tenant column `org` (c - 1/acme)".into()]),
            ("column: truncate is not routed by rows", &column_rule, "db", Op::Truncate, None, None,
                vec![format!("unresolved: {TRUNCATE_SHARED} (t - -)")]),
        ];
        let schema = shared_schema();
        for (name, rule, database, op, before, after, want) in cases {
            let mut names = TenantNames::new();
            let routed = route(&mut names, rule, database, &schema, op, before, after);
            assert_eq!(routed.len(), want.len(), "{name}");
            assert_eq!(render(routed), want, "{name}");
        }
    }

    #[test]
    fn routed_outputs_take_the_context_clone_free_last() {
        let mut names = TenantNames::new();
        let rule = TenantRule::Column { column: "tenant_id".into() };
        let schema = shared_schema();
        let moved = route(&mut names, &rule, "db", &schema, Op::Update, row(1, s("a")), row(1, s("b")));
        let mut seen = Vec::new();
        moved.each_with(Rc::new(()), |r, ctx| seen.push((matches!(r, Route::Change(_)), Rc::strong_count(&ctx))));
        // The first output holds a clone (2 references), the last the original.
        assert_eq!(seen, vec![(true, 2), (true, 1)]);
        let none = route(
            &mut names,
            &TenantRule::schema_pattern("lab_{tenant}").unwrap(),
            "x",
            &schema,
            Op::Create,
            None,
            None,
        );
        none.each_with((), |_, ()| panic!("nothing to route"));
    }

    #[test]
    fn tenant_names_are_shared_and_bounded() {
        let mut names = TenantNames::new();
        let rule = TenantRule::schema_pattern("lab_{tenant}").unwrap();
        let a = names.of_database(&rule, "lab_acme").unwrap();
        assert!(Arc::ptr_eq(&a, &names.of_database(&rule, "lab_acme").unwrap()));
        assert_eq!(names.of_database(&rule, "mysql"), None);
        let v = names.of_value(&s("acme")).unwrap();
        assert!(Arc::ptr_eq(&v, &names.of_value(&s("acme")).unwrap()));
        assert!(Arc::ptr_eq(&names.of_value(&Value::UInt(7)).unwrap(), &names.of_value(&Value::Int(7)).unwrap()));
        assert!(names.of_value(&s("Acme")).is_err());
        for i in 0..25_000 {
            names.of_value(&Value::Int(i)).unwrap();
            names.of_database(&rule, &format!("lab_t{i}"));
        }
        assert!(names.by_value.len() <= MAX_TENANT_NAMES && names.by_database.len() <= MAX_TENANT_NAMES);
        // Invalid values are never stored.
        for i in 0..100 {
            assert!(names.of_value(&Value::String(format!("Bad {i}"))).is_err());
        }
        assert!(!names.by_value.keys().any(|k| k.starts_with("Bad")));
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
