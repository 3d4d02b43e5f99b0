//! Schema history: every shape a table had, numbered in the order it was
//! first seen, with what changed from the shape before it.
//!
//! A version identifies one exact shape (fingerprint of names, types,
//! nullability and key): the same shape always has the same version, so
//! registering is idempotent and a replay of old records finds their version
//! again. Records carry their version in the envelope
//! (`lablake.schema_version`) next to the full column list, so a consumer
//! can decode any record with its own schema.

use lablake_model::TableSchema;
use serde::{Deserialize, Serialize};

/// One column of a [`SchemaVersion`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaColumn {
    pub name: String,
    /// The model's type name, as in the envelope (`int64`, `decimal(12,2)`, ...).
    #[serde(rename = "type")]
    pub ty: String,
    pub nullable: bool,
}

/// One entry of a table's schema history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaVersion {
    /// 1, 2, ...: order of first registration. Assigned by the store.
    pub version: u32,
    pub fingerprint: String,
    pub columns: Vec<SchemaColumn>,
    pub primary_key: Vec<String>,
    /// Source position of the first record seen with this shape.
    pub first_position: String,
    pub registered_ms: i64,
    /// What changed from the previous version, e.g. `added column x`,
    /// `dropped column y`, `renamed column a to b`, `column c: int32 -> int64`.
    /// Renames are inferred: a dropped and an added column at the same
    /// position with the same type.
    pub changes: Vec<String>,
}

impl SchemaVersion {
    /// An unregistered entry (version 0) for `schema`, first seen at `position`.
    pub fn of(schema: &TableSchema, position: &str, now_ms: i64) -> Self {
        SchemaVersion {
            version: 0,
            fingerprint: schema.fingerprint().to_owned(),
            columns: schema
                .columns
                .iter()
                .map(|c| SchemaColumn { name: c.name.clone(), ty: c.ty.to_string(), nullable: c.nullable })
                .collect(),
            primary_key: schema
                .primary_key
                .iter()
                .filter_map(|i| schema.columns.get(*i))
                .map(|c| c.name.clone())
                .collect(),
            first_position: position.to_owned(),
            registered_ms: now_ms,
            changes: Vec::new(),
        }
    }

    /// An entry recording that the table was dropped (no columns), at `now_ms`.
    pub fn dropped(now_ms: i64) -> Self {
        SchemaVersion {
            version: 0,
            fingerprint: format!("{DROPPED}{now_ms}"),
            columns: Vec::new(),
            primary_key: Vec::new(),
            first_position: String::new(),
            registered_ms: now_ms,
            changes: Vec::new(),
        }
    }

    /// Whether this entry records a drop of the table.
    pub fn is_drop(&self) -> bool {
        self.fingerprint.starts_with(DROPPED)
    }

    /// The changes from `prev` to `self`, in column order.
    pub fn changes_from(&self, prev: &SchemaVersion) -> Vec<String> {
        let old = |name: &str| prev.columns.iter().position(|c| c.name == name);
        let new = |name: &str| self.columns.iter().position(|c| c.name == name);
        let mut dropped: Vec<(usize, &SchemaColumn)> =
            prev.columns.iter().enumerate().filter(|(_, c)| new(&c.name).is_none()).collect();
        let mut out = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            match old(&c.name) {
                Some(j) => {
                    let p = &prev.columns[j];
                    if p.ty != c.ty {
                        out.push(format!("column {}: {} -> {}", c.name, p.ty, c.ty));
                    }
                    if p.nullable != c.nullable {
                        let n = |b: bool| if b { "nullable" } else { "not null" };
                        out.push(format!("column {}: {} -> {}", c.name, n(p.nullable), n(c.nullable)));
                    }
                }
                None => match dropped.iter().position(|(j, d)| *j == i && d.ty == c.ty) {
                    Some(k) => {
                        let (_, d) = dropped.remove(k);
                        out.push(format!("renamed column {} to {}", d.name, c.name));
                    }
                    None => out.push(format!("added column {}", c.name)),
                },
            }
        }
        for (_, d) in dropped {
            out.push(format!("dropped column {}", d.name));
        }
        if prev.primary_key != self.primary_key {
            out.push(format!("primary key ({}) -> ({})", prev.primary_key.join(", "), self.primary_key.join(", ")));
        }
        out
    }
}

const DROPPED: &str = "dropped:";

/// What registering `candidate` against `history` (ordered by version) does.
pub(crate) enum Registration {
    Existing(u32),
    Append(SchemaVersion),
}

/// The decision both stores make (then write conditionally).
pub(crate) fn register(history: &[SchemaVersion], candidate: &SchemaVersion) -> Registration {
    // Shapes are looked up since the table's last drop: a table created again
    // starts a new run of versions.
    let since_drop = history.iter().rposition(SchemaVersion::is_drop).map_or(0, |i| i + 1);
    let current = &history[since_drop..];
    if candidate.is_drop() {
        if let Some(last) = history.last().filter(|v| v.is_drop()) {
            return Registration::Existing(last.version);
        }
    } else if let Some(v) = current.iter().find(|v| v.fingerprint == candidate.fingerprint) {
        return Registration::Existing(v.version);
    }
    let mut entry = candidate.clone();
    entry.version = history.last().map_or(1, |v| v.version + 1);
    entry.changes = match history.last() {
        _ if candidate.is_drop() => vec!["dropped table".to_owned()],
        None => vec!["new table".to_owned()],
        Some(latest) if latest.is_drop() => vec!["table created again".to_owned()],
        Some(latest) => entry.changes_from(latest),
    };
    Registration::Append(entry)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use lablake_model::{Column, ColumnType};

    fn schema(cols: &[(&str, ColumnType)]) -> SchemaVersion {
        let columns = cols.iter().map(|(n, t)| Column { name: (*n).into(), ty: t.clone(), nullable: true }).collect();
        SchemaVersion::of(&TableSchema::new(columns, vec![0]), "p", 0)
    }

    #[test]
    fn changes_name_additions_drops_renames_and_type_changes() {
        let int = |b| ColumnType::Int { bytes: b, unsigned: false };
        let v1 = schema(&[("id", int(8)), ("a", ColumnType::String), ("n", int(4)), ("gone", int(4))]);
        let v2 = schema(&[("id", int(8)), ("b", ColumnType::String), ("n", int(8)), ("extra", ColumnType::Json)]);
        assert_eq!(
            v2.changes_from(&v1),
            vec!["renamed column a to b", "column n: int32 -> int64", "added column extra", "dropped column gone"]
        );
        assert!(v1.changes_from(&v1).is_empty());
        assert_eq!(v1.primary_key, vec!["id"]);
    }
}
