//! Classification of QUERY events: transaction control, DDL (with the
//! tables it touches, for cache invalidation) and everything else.

/// What a QUERY event means for the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryKind {
    /// `BEGIN` / `START TRANSACTION` / `XA START`.
    Begin,
    /// `COMMIT` (ends a transaction group).
    Commit,
    /// `ROLLBACK`: ends a group whose logged changes touched non-transactional
    /// tables (they stay applied).
    Rollback,
    /// `SAVEPOINT`, `ROLLBACK TO`, `XA END`, `RELEASE SAVEPOINT`.
    Savepoint,
    /// DDL on tables. `tables` are `(database, table)` pairs with the
    /// database filled from the event's default schema; `None` means the
    /// statement could not be parsed and every cached table must be dropped.
    Ddl { tables: Option<Vec<(String, String)>>, whole_databases: Vec<String> },
    /// `TRUNCATE`: removes rows without row events.
    Truncate { tables: Option<Vec<(String, String)>> },
    /// Anything else (statement-based DML, `ALTER USER`, `CREATE VIEW`...).
    Other,
}

/// Classifies a query given the event's default schema.
pub(crate) fn classify(sql: &str, default_db: &str) -> QueryKind {
    let mut t = Tokens::new(sql);
    let Some(first) = t.word() else { return QueryKind::Other };
    match first.as_str() {
        "BEGIN" => QueryKind::Begin,
        "START" if t.word().as_deref() == Some("TRANSACTION") => QueryKind::Begin,
        "COMMIT" => QueryKind::Commit,
        "ROLLBACK" => match t.word().as_deref() {
            Some("TO") => QueryKind::Savepoint,
            _ => QueryKind::Rollback,
        },
        "SAVEPOINT" | "RELEASE" => QueryKind::Savepoint,
        "XA" => match t.word().as_deref() {
            Some("START" | "BEGIN") => QueryKind::Begin,
            Some("END") => QueryKind::Savepoint,
            Some("COMMIT") => QueryKind::Commit,
            Some("ROLLBACK") => QueryKind::Rollback,
            _ => QueryKind::Other,
        },
        "TRUNCATE" => {
            let mut look = t.clone();
            if look.word().as_deref() == Some("TABLE") {
                t = look;
            }
            QueryKind::Truncate { tables: t.names(default_db, false) }
        }
        "CREATE" | "ALTER" | "DROP" | "RENAME" => ddl(first.as_str(), t, default_db),
        _ => QueryKind::Other,
    }
}

fn ddl(verb: &str, mut t: Tokens<'_>, default_db: &str) -> QueryKind {
    let unknown = QueryKind::Ddl { tables: None, whole_databases: Vec::new() };
    // Skip modifiers until the object keyword.
    let object = loop {
        let Some(w) = t.word() else { return QueryKind::Other };
        match w.as_str() {
            "OR" | "REPLACE" | "TEMPORARY" | "ONLINE" | "OFFLINE" | "IGNORE" | "UNIQUE" | "FULLTEXT" | "SPATIAL" => {}
            _ => break w,
        }
    };
    match object.as_str() {
        "TABLE" | "TABLES" => {
            let mut look = t.clone();
            if look.word().as_deref() == Some("IF") {
                // IF [NOT] EXISTS
                let w = look.word();
                if w.as_deref() == Some("NOT") {
                    look.word();
                }
                t = look;
            }
            match t.names(default_db, verb == "RENAME") {
                Some(tables) => QueryKind::Ddl { tables: Some(tables), whole_databases: Vec::new() },
                None => unknown,
            }
        }
        "INDEX" => {
            // CREATE/DROP INDEX name ON table
            t.ident();
            if t.word().as_deref() != Some("ON") {
                return unknown;
            }
            match t.names(default_db, false) {
                Some(mut tables) => {
                    tables.truncate(1);
                    QueryKind::Ddl { tables: Some(tables), whole_databases: Vec::new() }
                }
                None => unknown,
            }
        }
        "DATABASE" | "SCHEMA" => {
            let mut look = t.clone();
            if look.word().as_deref() == Some("IF") {
                let w = look.word();
                if w.as_deref() == Some("NOT") {
                    look.word();
                }
                t = look;
            }
            match t.ident() {
                Some(db) => QueryKind::Ddl { tables: Some(Vec::new()), whole_databases: vec![db] },
                None => unknown,
            }
        }
        // Views, triggers, users, procedures, events... do not change table maps.
        _ => QueryKind::Other,
    }
}

#[derive(Clone)]
struct Tokens<'a> {
    s: &'a str,
}

impl<'a> Tokens<'a> {
    fn new(s: &'a str) -> Self {
        Tokens { s }
    }

    fn skip_space_and_comments(&mut self) {
        loop {
            let t = self.s.trim_start();
            if let Some(rest) = t.strip_prefix("/*") {
                // Versioned comments `/*!50100 ... */` hold real SQL: keep their body.
                if let Some(body) = rest.strip_prefix('!') {
                    let body = body.trim_start_matches(|c: char| c.is_ascii_digit());
                    self.s = body;
                    continue;
                }
                self.s = rest.find("*/").map_or("", |i| &rest[i + 2..]);
            } else if let Some(rest) = t.strip_prefix("*/") {
                self.s = rest;
            } else if t.starts_with("-- ") || t.starts_with('#') {
                self.s = t.find('\n').map_or("", |i| &t[i + 1..]);
            } else {
                self.s = t;
                return;
            }
        }
    }

    /// The next bare word, upper-cased.
    fn word(&mut self) -> Option<String> {
        self.skip_space_and_comments();
        let end = self.s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(self.s.len());
        if end == 0 {
            return None;
        }
        let w = self.s[..end].to_ascii_uppercase();
        self.s = &self.s[end..];
        Some(w)
    }

    /// The next identifier, bare or `quoted`.
    fn ident(&mut self) -> Option<String> {
        self.skip_space_and_comments();
        if let Some(rest) = self.s.strip_prefix('`') {
            let mut out = String::new();
            let mut chars = rest.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '`' {
                    if chars.peek().map(|(_, c)| *c) == Some('`') {
                        chars.next();
                        out.push('`');
                    } else {
                        self.s = &rest[i + 1..];
                        return Some(out);
                    }
                } else {
                    out.push(c);
                }
            }
            None
        } else {
            let end = self.s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).unwrap_or(self.s.len());
            if end == 0 {
                return None;
            }
            let id = self.s[..end].to_owned();
            self.s = &self.s[end..];
            Some(id)
        }
    }

    /// `[db.]name` optionally followed by `.`
    fn qualified(&mut self, default_db: &str) -> Option<(String, String)> {
        let first = self.ident()?;
        self.skip_space_and_comments();
        if let Some(rest) = self.s.strip_prefix('.') {
            self.s = rest;
            let second = self.ident()?;
            Some((first, second))
        } else {
            Some((default_db.to_owned(), first))
        }
    }

    /// A comma-separated list of table names; for RENAME, `a TO b` pairs
    /// (both names are returned).
    fn names(&mut self, default_db: &str, rename: bool) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        loop {
            out.push(self.qualified(default_db)?);
            if rename {
                if self.word().as_deref() != Some("TO") {
                    return None;
                }
                out.push(self.qualified(default_db)?);
            }
            self.skip_space_and_comments();
            match self.s.strip_prefix(',') {
                Some(rest) => self.s = rest,
                None => return Some(out),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tables(q: &str) -> Option<Vec<(String, String)>> {
        match classify(q, "db") {
            QueryKind::Ddl { tables, .. } | QueryKind::Truncate { tables } => tables,
            other => panic!("{q}: {other:?}"),
        }
    }

    fn t(db: &str, table: &str) -> (String, String) {
        (db.to_owned(), table.to_owned())
    }

    #[test]
    fn transaction_control() {
        assert_eq!(classify("BEGIN", "x"), QueryKind::Begin);
        assert_eq!(classify("  commit", "x"), QueryKind::Commit);
        assert_eq!(classify("ROLLBACK", "x"), QueryKind::Rollback);
        assert_eq!(classify("ROLLBACK TO mixed_cases", "x"), QueryKind::Savepoint);
        assert_eq!(classify("SavePoint s1", "x"), QueryKind::Savepoint);
        assert_eq!(classify("XA START 'x'", "x"), QueryKind::Begin);
        assert_eq!(classify("insert into t1 values (1)", "x"), QueryKind::Other);
        assert_eq!(classify("ALTER USER 'root'@'localhost' IDENTIFIED BY 'x'", "x"), QueryKind::Other);
        assert_eq!(classify("", "x"), QueryKind::Other);
    }

    #[test]
    fn ddl_tables() {
        assert_eq!(tables("CREATE TABLE t1 (a int)").unwrap(), vec![t("db", "t1")]);
        assert_eq!(tables("create table if not exists `o``dd`.`x y` (a int)").unwrap(), vec![t("o`dd", "x y")]);
        assert_eq!(
            tables("ALTER TABLE `foobar` CHANGE `foo` `old_foo` varchar(100)").unwrap(),
            vec![t("db", "foobar")]
        );
        assert_eq!(tables("DROP TABLE `t1` /* generated by server */").unwrap(), vec![t("db", "t1")]);
        assert_eq!(tables("DROP TABLE IF EXISTS a, other.b").unwrap(), vec![t("db", "a"), t("other", "b")]);
        assert_eq!(
            tables("RENAME TABLE a TO b, c.d TO c.e").unwrap(),
            vec![t("db", "a"), t("db", "b"), t("c", "d"), t("c", "e")]
        );
        assert_eq!(tables("/* x */ CREATE OR REPLACE TABLE t (a int)").unwrap(), vec![t("db", "t")]);
        assert_eq!(tables("CREATE INDEX i ON s.t (a)").unwrap(), vec![t("s", "t")]);
        assert_eq!(tables("TRUNCATE TABLE t").unwrap(), vec![t("db", "t")]);
        assert_eq!(tables("TRUNCATE t2").unwrap(), vec![t("db", "t2")]);
        assert_eq!(tables("ALTER TABLE (garbage"), None);
        match classify("DROP DATABASE IF EXISTS lab_x", "db") {
            QueryKind::Ddl { whole_databases, .. } => assert_eq!(whole_databases, vec!["lab_x".to_owned()]),
            other => panic!("{other:?}"),
        }
        assert_eq!(classify("CREATE VIEW v AS SELECT 1", "db"), QueryKind::Other);
    }
}
