//! Serde for [`Resume`], which `lablake-model` does not derive: externally
//! tagged, snake case (`{"binlog": {"file", "pos", "gtid"}}`, `{"lsn": n}`).
//! Remove once the model crate derives `Serialize`/`Deserialize` on `Resume`
//! with that shape.

use lablake_model::Resume;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Ref<'a> {
    Binlog { file: &'a str, pos: u64, gtid: Option<&'a str> },
    Lsn(u64),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Owned {
    Binlog {
        file: String,
        pos: u64,
        #[serde(default)]
        gtid: Option<String>,
    },
    Lsn(u64),
}

pub(crate) fn serialize<S: Serializer>(r: &Resume, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Resume::Binlog { file, pos, gtid } => Ref::Binlog { file, pos: *pos, gtid: gtid.as_deref() },
        Resume::Lsn(lsn) => Ref::Lsn(*lsn),
    }
    .serialize(s)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Resume, D::Error> {
    Ok(match Owned::deserialize(d)? {
        Owned::Binlog { file, pos, gtid } => Resume::Binlog { file, pos, gtid },
        Owned::Lsn(lsn) => Resume::Lsn(lsn),
    })
}

#[cfg(test)]
mod tests {
    use crate::SourceCheckpoint;
    use lablake_model::Resume;

    #[test]
    fn source_checkpoints_round_trip_through_json() {
        let binlog = SourceCheckpoint {
            resume: Resume::Binlog { file: "binlog.000002".into(), pos: 154, gtid: Some("0-1-7".into()) },
            position: "p".into(),
            commit_ts_ms: 5,
        };
        let json = serde_json::to_value(&binlog).expect("serialize");
        assert_eq!(
            json["resume"],
            serde_json::json!({"binlog": {"file": "binlog.000002", "pos": 154, "gtid": "0-1-7"}})
        );
        assert_eq!(serde_json::from_value::<SourceCheckpoint>(json).expect("deserialize"), binlog);
        let lsn = SourceCheckpoint { resume: Resume::Lsn(u64::MAX), ..binlog };
        let json = serde_json::to_value(&lsn).expect("serialize");
        assert_eq!(json["resume"], serde_json::json!({"lsn": u64::MAX}));
        assert_eq!(serde_json::from_value::<SourceCheckpoint>(json).expect("deserialize"), lsn);
    }
}
