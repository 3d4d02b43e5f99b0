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

/// pgoutput messages (protocol 2, binary values) of a 12-column results
/// table: the Relation, then `n` transactions of one Insert each, as
/// `(payload, wal_end)`, built exactly as PostgreSQL sends them.
pub mod pgoutput {
    /// Relation message of `lab_acme.results` (oid 16384).
    pub fn relation() -> Vec<u8> {
        let cols: [(&str, u32, i32); 12] = [
            ("id", 20, -1),
            ("order_id", 20, -1),
            ("patient_id", 23, -1),
            ("loinc", 25, -1),
            ("value_num", 1700, ((18 << 16) | 6) + 4),
            ("value_text", 25, -1),
            ("unit", 1043, 24),
            ("ref_low", 701, -1),
            ("abnormal", 25, -1),
            ("collected_at", 1114, -1),
            ("resulted_at", 1184, -1),
            ("status", 21, -1),
        ];
        let mut m = vec![b'R'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        m.extend_from_slice(b"lab_acme\0results\0");
        m.push(b'd');
        m.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for (i, (name, oid, typmod)) in cols.iter().enumerate() {
            m.push(u8::from(i == 0));
            m.extend_from_slice(name.as_bytes());
            m.push(0);
            m.extend_from_slice(&oid.to_be_bytes());
            m.extend_from_slice(&typmod.to_be_bytes());
        }
        m
    }

    fn value(m: &mut Vec<u8>, b: &[u8]) {
        m.push(b'b');
        m.extend_from_slice(&(b.len() as i32).to_be_bytes());
        m.extend_from_slice(b);
    }

    /// Binary `numeric` of `int.frac` (frac has 6 digits), dscale 6.
    fn numeric(int: u32, frac_micros: u32) -> Vec<u8> {
        // Groups of 4 decimal digits: integer groups, then 0.xxxx xx00.
        let mut digits: Vec<u16> = Vec::new();
        let mut weight: i16 = -1;
        if int > 0 {
            let mut groups = Vec::new();
            let mut x = int;
            while x > 0 {
                groups.push((x % 10_000) as u16);
                x /= 10_000;
            }
            weight = groups.len() as i16 - 1;
            digits.extend(groups.iter().rev());
        }
        digits.push((frac_micros / 100) as u16);
        digits.push(((frac_micros % 100) * 100) as u16);
        let mut b = Vec::new();
        b.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        b.extend_from_slice(&weight.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&6u16.to_be_bytes());
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    /// `n` committed single-insert transactions: Begin, Insert, Commit each.
    pub fn transactions(n: usize) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::with_capacity(3 * n);
        let mut lsn: u64 = 0x1_0000_0000;
        for i in 0..n as u64 {
            let commit = lsn + 300;
            let mut b = vec![b'B'];
            b.extend_from_slice(&commit.to_be_bytes());
            b.extend_from_slice(&(846_000_000_000_000i64 + i as i64).to_be_bytes());
            b.extend_from_slice(&(1000 + i as u32).to_be_bytes());
            out.push((b, lsn + 20));
            let mut m = vec![b'I'];
            m.extend_from_slice(&16384u32.to_be_bytes());
            m.push(b'N');
            m.extend_from_slice(&12i16.to_be_bytes());
            value(&mut m, &(i as i64).to_be_bytes());
            value(&mut m, &(i as i64 / 4).to_be_bytes());
            value(&mut m, &((i % 100_000) as i32).to_be_bytes());
            value(&mut m, format!("{}-{}", 1000 + i % 9000, i % 10).as_bytes());
            value(&mut m, &numeric((i % 500) as u32, (i % 1_000_000) as u32));
            value(&mut m, b"within range");
            value(&mut m, b"mmol/L");
            value(&mut m, &3.5f64.to_be_bytes());
            value(&mut m, if i % 10 == 0 { b"H" } else { b"N" });
            value(&mut m, &(846_000_000_000_000i64 + i as i64 * 1000).to_be_bytes());
            value(&mut m, &(846_000_000_000_000i64 + i as i64 * 1000).to_be_bytes());
            value(&mut m, &1i16.to_be_bytes());
            out.push((m, lsn + 250));
            let mut c = vec![b'C', 0];
            c.extend_from_slice(&commit.to_be_bytes());
            c.extend_from_slice(&(commit + 40).to_be_bytes());
            c.extend_from_slice(&(846_000_000_000_000i64 + i as i64).to_be_bytes());
            out.push((c, commit + 40));
            lsn = commit + 48;
        }
        out
    }
}

/// The results table in PostgreSQL, for the PostgreSQL benchmarks.
pub mod pg {
    /// DDL of `<schema>.results` (the schema must exist).
    pub fn results_ddl(schema: &str) -> String {
        format!(
            "CREATE TABLE {schema}.results (id bigint PRIMARY KEY, order_id bigint, patient_id int, loinc text,
               value_num numeric(18,6), value_text text, unit varchar(20), ref_low double precision, abnormal text,
               collected_at timestamp, resulted_at timestamptz, status smallint)"
        )
    }

    /// Inserts rows with ids `0..rows` into `<schema>.results`, `batch` per statement.
    pub async fn insert_results(
        c: &tokio_postgres::Client,
        schema: &str,
        rows: i64,
        batch: i64,
    ) -> Result<(), tokio_postgres::Error> {
        let mut done = 0;
        while done < rows {
            let n = batch.min(rows - done);
            c.batch_execute(&format!(
                "INSERT INTO {schema}.results SELECT g, g / 4, g % 100000, (1000 + g % 9000) || '-' || g % 10,
                   (g % 500) + (g % 1000000) / 1000000.0, 'within range', 'mmol/L', 3.5,
                   CASE WHEN g % 10 = 0 THEN 'H' ELSE 'N' END, now(), now(), 1
                 FROM generate_series({done}, {done} + {n} - 1) g"
            ))
            .await?;
            done += n;
        }
        Ok(())
    }
}

/// The results table in MySQL/MariaDB, for the MySQL benchmarks.
pub mod mysql {
    /// DDL of `results` (in the current database).
    pub const RESULTS_DDL: &str = "CREATE TABLE results (
        id BIGINT UNSIGNED NOT NULL PRIMARY KEY, order_id BIGINT UNSIGNED NOT NULL, patient_id INT NOT NULL,
        loinc VARCHAR(10) NOT NULL, value_num DECIMAL(18,6), value_text VARCHAR(200), unit VARCHAR(20),
        ref_low DOUBLE, abnormal ENUM('N','L','H','LL','HH','A'), collected_at DATETIME(6), resulted_at TIMESTAMP(6) NULL,
        status TINYINT NOT NULL)";

    /// `INSERT INTO results VALUES …` for ids `ids`.
    pub fn insert_results(ids: std::ops::Range<u64>) -> String {
        let values: Vec<String> = ids
            .map(|i| {
                format!(
                    "({i}, {}, {}, '{}-{}', {}.{:06}, 'within range', 'mmol/L', 3.5, '{}', NOW(6), NOW(6), 1)",
                    i / 4,
                    i % 100_000,
                    1000 + i % 9000,
                    i % 10,
                    i % 500,
                    i % 1_000_000,
                    if i % 10 == 0 { "H" } else { "N" }
                )
            })
            .collect();
        format!("INSERT INTO results VALUES {}", values.join(","))
    }
}
