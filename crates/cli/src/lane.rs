//! Lanes: user-defined tables (customer-created, found at run time, possibly
//! huge) are processed apart from the core tables — their own snapshot
//! worker per source and their own curation consumer group — so a large one
//! never delays the core tables.

use lablake_model::tenant::UserTableRule;

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
