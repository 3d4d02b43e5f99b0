//! Serde for [`TableId`], which `lablake-model` does not derive: the same
//! shape a derive would give (`{"tenant", "database", "table"}`). Remove once
//! the model crate derives `Serialize`/`Deserialize` on `TableId`.

use lablake_model::TableId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize)]
struct Ref<'a> {
    tenant: &'a str,
    database: &'a str,
    table: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Owned {
    tenant: String,
    database: String,
    table: String,
}

pub(crate) fn serialize<S: Serializer>(t: &TableId, s: S) -> Result<S::Ok, S::Error> {
    Ref { tenant: &t.tenant, database: &t.database, table: &t.table }.serialize(s)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TableId, D::Error> {
    let o = Owned::deserialize(d)?;
    Ok(TableId { tenant: o.tenant.into(), database: o.database.into(), table: o.table.into() })
}

#[cfg(test)]
mod tests {
    use crate::{BatchCommit, BatchIntent};

    #[test]
    fn batch_commit_round_trips_through_json() {
        let c = BatchCommit {
            intent: BatchIntent { first_offset: 1, last_offset: 2, object_key: "k".into() },
            table: lablake_model::TableId { tenant: "t".into(), database: "d".into(), table: "x".into() },
            source: "s".into(),
            rows: 3,
            bytes: 4,
            dead_lettered: 0,
            max_commit_ts_ms: 5,
            max_position: "p".into(),
            high_water: Some(crate::HighWater { position: "p".into(), keys: vec!["00".into()] }),
        };
        let json = serde_json::to_value(&c).expect("serialize");
        assert_eq!(json["table"], serde_json::json!({"tenant": "t", "database": "d", "table": "x"}));
        assert_eq!(serde_json::from_value::<BatchCommit>(json).expect("deserialize"), c);
    }
}
