//! Shared fixtures of the benchmarks: a 12-column lab `results` table.

use std::sync::Arc;

use lablake_model::{
    ChangeEvent, Column, ColumnType, Date, DateTime, Op, SourceInfo, SourcePosition, TableId, TableSchema, Value,
};

/// The 12-column results table of the benchmarks.
pub fn results_schema() -> Arc<TableSchema> {
    let c = |name: &str, ty: ColumnType| Column { name: name.into(), ty, nullable: true };
    TableSchema::new(
        vec![
            c("id", ColumnType::Int { bytes: 8, unsigned: true }),
            c("order_id", ColumnType::Int { bytes: 8, unsigned: true }),
            c("patient_id", ColumnType::Int { bytes: 4, unsigned: false }),
            c("loinc", ColumnType::String),
            c("value_num", ColumnType::Decimal { precision: 18, scale: 6 }),
            c("value_text", ColumnType::String),
            c("unit", ColumnType::String),
            c("ref_low", ColumnType::Double),
            c("abnormal", ColumnType::Enum),
            c("collected_at", ColumnType::DateTime),
            c("resulted_at", ColumnType::Timestamp),
            c("status", ColumnType::Int { bytes: 1, unsigned: false }),
        ],
        vec![0],
    )
}

/// `n` insert events of the results table.
pub fn results_events(n: usize) -> Vec<ChangeEvent> {
    let schema = results_schema();
    (0..n)
        .map(|i| {
            let i64v = i as i64;
            ChangeEvent {
                table: TableId { tenant: "acme".into(), database: "lab_acme".into(), table: "results".into() },
                op: Op::Create,
                schema: schema.clone(),
                before: None,
                after: Some(vec![
                    Value::UInt(i as u64),
                    Value::UInt(i as u64 / 4),
                    Value::Int(i64v % 100_000),
                    Value::String(format!("{}-{}", 1000 + i % 9000, i % 10)),
                    Value::Decimal(format!("{}.{:06}", i % 500, i % 1_000_000)),
                    Value::String("within range".into()),
                    Value::String("mmol/L".into()),
                    Value::Double(3.5),
                    Value::Enum(if i % 10 == 0 { "H".into() } else { "N".into() }),
                    Value::DateTime(DateTime {
                        date: Date { year: 2026, month: 11, day: 27 },
                        hour: (i % 24) as u8,
                        minute: (i % 60) as u8,
                        second: 7,
                        micros: (i % 1_000_000) as u32,
                    }),
                    Value::Timestamp(1_790_000_000_000_000 + i64v * 1000),
                    Value::Int(1),
                ]),
                source: SourceInfo {
                    connector: "mysql".into(),
                    name: "main".into(),
                    server_id: 1,
                    file: "binlog.000001".into(),
                    pos: 4 + i as u64,
                    row: 0,
                    gtid: Some(format!("0-1-{i}").into()),
                    ts_ms: 1_790_000_000_000 + i64v,
                    position: SourcePosition::mysql(1, 4 + i as u64, 0),
                },
                ts_ms: 1_790_000_000_000,
            }
        })
        .collect()
}
