//! Lanes: user-defined tables (customer-created, found at run time, possibly
//! huge) are processed apart from the core tables — their own snapshot
//! worker per source and their own curation consumer group — so a large one
//! never delays the core tables.

use lablake_model::tenant::UserTableRule;
use serde::Deserialize;

use crate::curator::CurateConfig;
use crate::snapshot::SnapshotConfig;

/// `[user_tables]`: which tables are user-defined (customer-created, found
/// at run time) and the budget of their lane. Their snapshots run in their
/// own worker per source (own chunk size and rate cap, never queued behind
/// core tables or in front of them) and their topics are curated by their own
/// consumer group `<curate.group>-udt` with its own memory budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTablesConfig {
    /// Globs over the table name, e.g. `["udt_*"]`. Empty: no separate lane.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Rows per snapshot chunk of a user-defined table.
    #[serde(default = "default_udt_chunk_rows")]
    pub chunk_rows: usize,
    /// Cap on snapshot rows read per second per source for user-defined tables (0: none).
    #[serde(default)]
    pub max_rows_per_second: u64,
    /// Byte budget of the user-defined lane's open batches.
    #[serde(default = "default_udt_open_bytes")]
    pub max_open_bytes: usize,
}

fn default_udt_chunk_rows() -> usize {
    5_000
}
fn default_udt_open_bytes() -> usize {
    32 * 1024 * 1024
}

impl Default for UserTablesConfig {
    fn default() -> Self {
        UserTablesConfig {
            patterns: Vec::new(),
            chunk_rows: default_udt_chunk_rows(),
            max_rows_per_second: 0,
            max_open_bytes: default_udt_open_bytes(),
        }
    }
}

impl UserTablesConfig {
    /// The pure rule (invalid patterns are refused by [`UserTablesConfig::validate`]).
    pub fn rule(&self) -> UserTableRule {
        UserTableRule::new(&self.patterns).unwrap_or_default()
    }

    /// Checks the patterns and budgets; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Err(e) = UserTableRule::new(&self.patterns) {
            return Err(("user_tables.patterns".into(), e.to_string()));
        }
        if self.chunk_rows == 0 || self.chunk_rows > 1_000_000 {
            return Err(("user_tables.chunk_rows".into(), "must be between 1 and 1000000".into()));
        }
        if self.max_open_bytes < 1024 * 1024 {
            return Err(("user_tables.max_open_bytes".into(), "must be at least 1 MiB".into()));
        }
        Ok(())
    }

    /// The snapshot settings of the user-defined lane.
    pub fn snapshot(&self, core: &SnapshotConfig) -> SnapshotConfig {
        SnapshotConfig { chunk_rows: self.chunk_rows, max_rows_per_second: self.max_rows_per_second, ..core.clone() }
    }

    /// The curation settings of the user-defined lane.
    pub fn curate(&self, core: &CurateConfig) -> CurateConfig {
        CurateConfig { group: format!("{}-udt", core.group), max_open_bytes: self.max_open_bytes, ..core.clone() }
    }

    /// The snapshot lanes of every source.
    pub fn lanes(&self, core: &SnapshotConfig) -> Lanes {
        let rule = self.rule();
        Lanes { core: core.clone(), user: rule.is_enabled().then(|| (rule, self.snapshot(core))) }
    }

    /// The curators to run: the core lane (every table when no user-defined
    /// tables are configured) and, with patterns, the user-defined lane with
    /// its own group and budget, inheriting the core group's offsets.
    pub fn curators(&self, core: &CurateConfig) -> Vec<(Lane, CurateConfig, Option<String>)> {
        let rule = self.rule();
        if !rule.is_enabled() {
            return vec![(Lane::All, core.clone(), None)];
        }
        vec![
            (Lane::Core(rule.clone()), core.clone(), None),
            (Lane::User(rule), self.curate(core), Some(core.group.clone())),
        ]
    }
}

/// The snapshot lanes of every source: core tables with `[snapshot]`, and
/// user-defined tables with `[user_tables]`' budget when patterns are set.
#[derive(Debug, Clone)]
pub struct Lanes {
    pub core: SnapshotConfig,
    pub user: Option<(UserTableRule, SnapshotConfig)>,
}

impl Lanes {
    /// One worker per lane, with what it owns and its settings.
    pub fn workers(&self) -> Vec<(Lane, SnapshotConfig)> {
        match &self.user {
            None => vec![(Lane::All, self.core.clone())],
            Some((rule, cfg)) => {
                vec![(Lane::Core(rule.clone()), self.core.clone()), (Lane::User(rule.clone()), cfg.clone())]
            }
        }
    }
}

/// Which tables a snapshot worker or a curator owns.
#[derive(Debug, Clone)]
pub enum Lane {
    /// Every table (no user-defined tables configured).
    All,
    /// Tables that are not user-defined.
    Core(UserTableRule),
    /// User-defined tables only.
    User(UserTableRule),
}

impl Lane {
    /// Whether the table named `table` belongs to this lane.
    pub fn owns(&self, table: &str) -> bool {
        match self {
            Lane::All => true,
            Lane::Core(r) => !r.is_user_table(table),
            Lane::User(r) => r.is_user_table(table),
        }
    }

    /// `core` or `user`, in logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Lane::All | Lane::Core(_) => "core",
            Lane::User(_) => "user",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lanes_split_the_tables() {
        let r = UserTableRule::new(&["udt_*".into()]).unwrap();
        let (core, user) = (Lane::Core(r.clone()), Lane::User(r));
        assert!(core.owns("orders") && !core.owns("udt_x"));
        assert!(user.owns("udt_x") && !user.owns("orders"));
        assert!(Lane::All.owns("udt_x") && Lane::All.owns("orders"));
        assert_eq!((core.name(), user.name()), ("core", "user"));
    }
}
