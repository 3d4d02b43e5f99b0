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
        let diff = self.diff(prev);
        let mut out = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            match prev.columns.iter().find(|p| p.name == c.name) {
                Some(p) => {
                    if p.ty != c.ty {
                        out.push(format!("column {}: {} -> {}", c.name, p.ty, c.ty));
                    }
                    if p.nullable != c.nullable {
                        let n = |b: bool| if b { "nullable" } else { "not null" };
                        out.push(format!("column {}: {} -> {}", c.name, n(p.nullable), n(c.nullable)));
                    }
                }
                None => match diff.renamed.iter().find(|(_, to)| *to == i) {
                    Some((from, _)) => {
                        out.push(format!("renamed column {} to {}", prev.columns[*from].name, c.name));
                    }
                    None => out.push(format!("added column {}", c.name)),
                },
            }
        }
        for j in &diff.dropped {
            out.push(format!("dropped column {}", prev.columns[*j].name));
        }
        if prev.primary_key != self.primary_key {
            out.push(format!("primary key ({}) -> ({})", prev.primary_key.join(", "), self.primary_key.join(", ")));
        }
        out
    }

    /// The columns renamed from `prev` to `self`, as `(old name, new name)`.
    pub fn renames_from(&self, prev: &SchemaVersion) -> Vec<(String, String)> {
        self.diff(prev)
            .renamed
            .into_iter()
            .map(|(from, to)| (prev.columns[from].name.clone(), self.columns[to].name.clone()))
            .collect()
    }

    fn column(&self, name: &str) -> Option<&SchemaColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Renames (a column of `prev` gone, one of `self` new, at the same
    /// position with the same type) and drops, by column index.
    fn diff(&self, prev: &SchemaVersion) -> Diff {
        let mut dropped: Vec<usize> =
            (0..prev.columns.len()).filter(|j| self.column(&prev.columns[*j].name).is_none()).collect();
        let mut renamed = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            if prev.column(&c.name).is_none()
                && let Some(k) = dropped.iter().position(|j| *j == i && prev.columns[*j].ty == c.ty)
            {
                renamed.push((dropped.remove(k), i));
            }
        }
        Diff { renamed, dropped }
    }
}

struct Diff {
    /// `(index in prev, index in self)`.
    renamed: Vec<(usize, usize)>,
    dropped: Vec<usize>,
}

/// Where a column of one schema version lives in the newest version of its
/// table's history: what a sink needs to keep a warehouse table in step
/// with renames and type changes while it still loads older batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnLineage {
    /// The column's name in the newest version (after later renames); its
    /// name in the asked version when it was dropped later.
    pub current: String,
    /// Its earlier names, newest first (renames before and after the asked
    /// version), except names other columns of the newest version have now.
    pub earlier: Vec<String>,
    /// Its type in the newest version (the `ColumnType` text form); `None`
    /// when the column is no longer in the table, or the version is unknown
    /// or from an earlier life of the table.
    pub current_type: Option<String>,
    /// The column was dropped in a later version of the same life.
    pub dropped_later: bool,
}

/// The lineage of `column` of schema `version` in `history` (ordered by
/// version). Versions are followed within the table's newest life (since
/// its last drop); a version from an earlier life, or an unknown one, gives
/// the column unchanged and no type.
///
/// "Newest" is the last registered version: a table that went back to an
/// earlier shape is still described by the last new shape it took.
pub fn column_lineage(history: &[SchemaVersion], version: u32, column: &str) -> ColumnLineage {
    let unknown =
        ColumnLineage { current: column.to_owned(), earlier: Vec::new(), current_type: None, dropped_later: false };
    let Some(at) = history.iter().position(|v| v.version == version && !v.is_drop()) else {
        return unknown;
    };
    if history[at].column(column).is_none() {
        return unknown;
    }
    let start = history[..at].iter().rposition(SchemaVersion::is_drop).map_or(0, |i| i + 1);
    if history[at..].iter().any(SchemaVersion::is_drop) {
        // An earlier life: its renames and types say nothing about the table now.
        return unknown;
    }
    let life = &history[start..];
    let at = at - start;
    // Names from oldest to newest.
    let mut chain = std::collections::VecDeque::from([column.to_owned()]);
    for k in (1..=at).rev() {
        let name = &chain[0];
        if life[k - 1].column(name).is_some() {
            continue;
        }
        match life[k].renames_from(&life[k - 1]).into_iter().find(|(_, to)| to == name) {
            Some((from, _)) => chain.push_front(from),
            // Added in version k: no earlier names.
            None => break,
        }
    }
    let mut alive = true;
    for k in at + 1..life.len() {
        let name = chain.back().map(String::as_str).unwrap_or(column);
        if life[k].column(name).is_some() {
            continue;
        }
        match life[k].renames_from(&life[k - 1]).into_iter().find(|(from, _)| from == name) {
            Some((_, to)) => chain.push_back(to),
            None => {
                alive = false;
                break;
            }
        }
    }
    let current = chain.pop_back().unwrap_or_else(|| column.to_owned());
    let newest = life.last();
    let current_type = if alive { newest.and_then(|v| v.column(&current)).map(|c| c.ty.clone()) } else { None };
    // A name another column has now is not this column's to take back.
    let earlier = chain.into_iter().rev().filter(|n| newest.is_none_or(|v| v.column(n).is_none())).collect();
    ColumnLineage { current, earlier, current_type, dropped_later: !alive }
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
        assert_eq!(v2.renames_from(&v1), vec![("a".to_owned(), "b".to_owned())]);
    }

    fn history(versions: Vec<SchemaVersion>) -> Vec<SchemaVersion> {
        let mut out: Vec<SchemaVersion> = Vec::new();
        for v in versions {
            match register(&out, &v) {
                Registration::Append(e) => out.push(e),
                Registration::Existing(_) => {}
            }
        }
        out
    }

    #[test]
    fn lineage_follows_renames_both_ways_and_names_the_newest_type() {
        let int = |b| ColumnType::Int { bytes: b, unsigned: false };
        let s = ColumnType::String;
        let h = history(vec![
            schema(&[("id", int(4)), ("a", s.clone()), ("n", int(4))]),
            // a -> b, n widened
            schema(&[("id", int(4)), ("b", s.clone()), ("n", int(8))]),
            // b -> c, a new column `a` reuses the old name
            schema(&[("id", int(4)), ("c", s.clone()), ("n", int(8)), ("a", int(2))]),
            // n dropped
            schema(&[("id", int(4)), ("c", s.clone()), ("a", int(2))]),
        ]);
        let l = |v, c| column_lineage(&h, v, c);
        let text = |t: &ColumnType| Some(t.to_string());
        let lineage = |current: &str, earlier: &[&str], ty: Option<String>, dropped_later| ColumnLineage {
            current: current.into(),
            earlier: earlier.iter().map(|e| (*e).to_owned()).collect(),
            current_type: ty,
            dropped_later,
        };
        // `a` is a different column's name now: not an earlier name to rename from.
        assert_eq!(l(1, "a"), lineage("c", &["b"], text(&s), false));
        assert_eq!(l(2, "b"), lineage("c", &["b"], text(&s), false));
        assert_eq!(l(4, "c"), lineage("c", &["b"], text(&s), false));
        // The new `a` has no earlier names.
        assert_eq!(l(3, "a"), lineage("a", &[], text(&int(2)), false));
        // Dropped later: no type to follow.
        assert_eq!(l(2, "n"), lineage("n", &[], None, true));
        assert_eq!(l(1, "id").current_type, text(&int(4)));
        // Unknown version or column: unchanged.
        assert_eq!(l(9, "a"), lineage("a", &[], None, false));
        assert_eq!(l(1, "zz").current, "zz");
    }

    #[test]
    fn lineage_stays_within_one_life_of_the_table() {
        let int = |b| ColumnType::Int { bytes: b, unsigned: false };
        let mut h = history(vec![schema(&[("id", int(4)), ("a", int(4))])]);
        let mut drop = SchemaVersion::dropped(5);
        drop.version = 2;
        h.push(drop);
        let mut again = schema(&[("id", int(8)), ("b", int(4))]);
        again.version = 3;
        h.push(again);
        // A batch of the first life leaves today's table alone.
        assert_eq!(column_lineage(&h, 1, "id").current_type, None);
        assert_eq!(column_lineage(&h, 1, "a").earlier, Vec::<String>::new());
        assert_eq!(column_lineage(&h, 3, "id").current_type, Some(int(8).to_string()));
        assert_eq!(column_lineage(&h, 3, "b").earlier, Vec::<String>::new());
    }
}
