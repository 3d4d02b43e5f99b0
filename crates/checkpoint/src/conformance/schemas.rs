//! [`SchemaStore`]: schema history.

use lablake_model::{Column, ColumnType, TableId, TableSchema};

use crate::{SchemaStore, SchemaVersion};

/// Runs every schema history check.
pub async fn run<S: SchemaStore>(store: &S, prefix: &str) {
    history_numbers_each_shape_once(store, prefix).await;
}

/// Schema history: a shape keeps its version (re-registering and replays
/// are no-ops), a new shape takes the next number with its changes against
/// the latest, racing registrars agree and never share a number, and tables
/// have separate histories.
pub async fn history_numbers_each_shape_once<S: SchemaStore>(store: &S, prefix: &str) {
    let t = TableId { tenant: format!("{prefix}a").into(), database: "lab".into(), table: "orders".into() };
    let other = TableId { table: "results".into(), ..t.clone() };
    let int = ColumnType::Int { bytes: 8, unsigned: false };
    let shape = |names: &[&str]| {
        let cols = names.iter().map(|n| Column { name: (*n).into(), ty: int.clone(), nullable: true }).collect();
        SchemaVersion::of(&TableSchema::new(cols, vec![0]), "0001", 5)
    };
    let (v1, v2, v3) = (shape(&["id", "a"]), shape(&["id", "a", "b"]), shape(&["id", "c", "b"]));
    assert!(store.schema_history(&t).await.expect("empty history").is_empty());
    assert_eq!(store.register_schema(&t, &v1).await.expect("v1"), 1);
    assert_eq!(store.register_schema(&t, &v1).await.expect("v1 again"), 1);
    let (a, b) = tokio::join!(store.register_schema(&t, &v2), store.register_schema(&t, &v2));
    assert_eq!((a.expect("race a"), b.expect("race b")), (2, 2), "racing registrars agree on a shape's version");
    assert_eq!(store.register_schema(&t, &v3).await.expect("v3"), 3);
    // A shape seen again (a replay of old records) keeps its old number.
    assert_eq!(store.register_schema(&t, &v1).await.expect("v1 replayed"), 1);
    assert_eq!(store.register_schema(&other, &v3).await.expect("other table"), 1);
    let h = store.schema_history(&t).await.expect("history");
    assert_eq!(h.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(h[0].changes, vec!["new table"]);
    assert_eq!(h[1].changes, vec!["added column b"]);
    assert_eq!(h[2].changes, vec!["renamed column a to c"]);
    assert_eq!((h[2].first_position.as_str(), h[2].primary_key.clone()), ("0001", vec!["id".to_owned()]));
    // A drop is recorded once; the table created again starts a new run of versions.
    let dropped = SchemaVersion::dropped(9);
    assert_eq!(store.register_schema(&t, &dropped).await.expect("drop"), 4);
    assert_eq!(store.register_schema(&t, &SchemaVersion::dropped(10)).await.expect("drop again"), 4);
    assert_eq!(store.register_schema(&t, &v1).await.expect("created again"), 5);
    let h = store.schema_history(&t).await.expect("history after drop");
    assert_eq!((h[3].changes.clone(), h[3].is_drop()), (vec!["dropped table".to_owned()], true));
    assert_eq!(h[4].changes, vec!["table created again"]);
    let (x, y) = tokio::join!(store.register_schema(&other, &v1), store.register_schema(&other, &v2));
    let (x, y) = (x.expect("race x"), y.expect("race y"));
    assert!(x != y && x > 1 && y > 1, "different shapes never share a number: {x} {y}");
    assert_eq!(store.schema_history(&other).await.expect("other history").len(), 3);
}
