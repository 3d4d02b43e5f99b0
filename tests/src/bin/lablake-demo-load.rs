//! Demo workload: seeds a multi-tenant lab database and generates live
//! inserts, updates and deletes.
//!
//! ```text
//! lablake-demo-load position                      # prints the current binlog file and position
//! lablake-demo-load seed acme northlab sunrise    # (re)creates lab_<tenant> databases with data
//! lablake-demo-load generate 30 acme northlab     # 30 s of live changes
//! lablake-demo-load count acme                    # rows per table in the source, as JSON
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mysql_async::prelude::Queryable;
use rand::Rng;
use rand::seq::IndexedRandom;

const DDL: &[&str] = &[
    "CREATE TABLE accounts (
        id INT NOT NULL PRIMARY KEY, name VARCHAR(120) NOT NULL, city VARCHAR(80),
        active TINYINT NOT NULL DEFAULT 1, created_at DATETIME(6) NOT NULL)",
    "CREATE TABLE providers (
        id INT NOT NULL PRIMARY KEY, account_id INT NOT NULL, npi CHAR(10) NOT NULL, full_name VARCHAR(120) NOT NULL,
        specialty ENUM('internal_medicine','pediatrics','cardiology','oncology','family_medicine') NOT NULL,
        email VARCHAR(120), created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
    "CREATE TABLE patients (
        id BIGINT UNSIGNED NOT NULL PRIMARY KEY, mrn VARCHAR(20) NOT NULL, first_name VARCHAR(60) NOT NULL,
        last_name VARCHAR(60) NOT NULL, dob DATE NOT NULL, sex ENUM('F','M','X') NOT NULL, phone VARCHAR(20),
        updated_at DATETIME(6) NOT NULL)",
    "CREATE TABLE orders (
        id BIGINT UNSIGNED NOT NULL PRIMARY KEY, patient_id BIGINT UNSIGNED NOT NULL, provider_id INT NOT NULL,
        account_id INT NOT NULL, order_code VARCHAR(20) NOT NULL, priority ENUM('routine','asap','stat') NOT NULL,
        status ENUM('new','collected','in_progress','resulted','cancelled') NOT NULL,
        ordered_at DATETIME(6) NOT NULL, collected_at DATETIME(6) NULL, total DECIMAL(10,2) NOT NULL, notes TEXT)",
    "CREATE TABLE results (
        id BIGINT UNSIGNED NOT NULL PRIMARY KEY, order_id BIGINT UNSIGNED NOT NULL, loinc VARCHAR(10) NOT NULL,
        analyte VARCHAR(80) NOT NULL, value_num DECIMAL(18,6) NULL, value_text VARCHAR(200) NULL, unit VARCHAR(20),
        ref_low DOUBLE, ref_high DOUBLE, flag ENUM('N','L','H','LL','HH','A') NOT NULL,
        resulted_at TIMESTAMP(6) NULL DEFAULT NULL, payload JSON)",
];

const TABLES: &[&str] = &["accounts", "providers", "patients", "orders", "results"];
const FIRST: &[&str] = &["Ana", "Ben", "Chloé", "Dev", "Elif", "Femi", "Guo", "Hana", "Ivan", "Jo", "Kai", "Lena"];
const LAST: &[&str] = &["Silva", "Okafor", "Müller", "Nguyen", "Kowalski", "Haddad", "Smith", "Tanaka", "Rossi"];
const TESTS: &[(&str, &str, &str, f64, f64)] = &[
    ("2345-7", "Glucose", "mg/dL", 70.0, 99.0),
    ("2160-0", "Creatinine", "mg/dL", 0.6, 1.3),
    ("718-7", "Hemoglobin", "g/dL", 12.0, 17.5),
    ("2823-3", "Potassium", "mmol/L", 3.5, 5.1),
    ("6690-2", "WBC", "10*3/uL", 4.5, 11.0),
    ("1742-6", "ALT", "U/L", 7.0, 56.0),
];

fn scale(tenant_index: usize) -> u64 {
    [3, 2, 1, 2, 1][tenant_index % 5]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = std::env::var("LABLAKE_MYSQL_URL").unwrap_or_else(|_| "mysql://lablake:lablake@127.0.0.1:23306".into());
    let pool = mysql_async::Pool::new(url.as_str());
    let mut conn = pool.get_conn().await.context("connecting to MariaDB")?;
    match args.first().map(String::as_str) {
        Some("position") => {
            let row: mysql_async::Row = conn.query_first("SHOW MASTER STATUS").await?.context("binary log is off")?;
            let file: String = row.get(0).context("file")?;
            let pos: u64 = row.get(1).context("pos")?;
            println!("{file} {pos}");
        }
        Some("seed") => {
            for (i, t) in args[1..].iter().enumerate() {
                seed(&mut conn, t, scale(i)).await?;
            }
        }
        Some("generate") => {
            let secs: u64 = args.get(1).context("seconds")?.parse()?;
            let tenants = &args[2..];
            let n = generate(&mut conn, tenants, Duration::from_secs(secs)).await?;
            eprintln!("generated {n} transactions");
        }
        Some("count") => {
            let mut out = serde_json::Map::new();
            for t in &args[1..] {
                let mut m = serde_json::Map::new();
                for table in TABLES {
                    let n: Option<u64> = conn.query_first(format!("SELECT COUNT(*) FROM lab_{t}.{table}")).await?;
                    m.insert((*table).into(), n.unwrap_or(0).into());
                }
                out.insert(t.clone(), m.into());
            }
            println!("{}", serde_json::Value::Object(out));
        }
        _ => bail!("usage: lablake-demo-load position | seed TENANT... | generate SECONDS TENANT... | count TENANT..."),
    }
    drop(conn);
    pool.disconnect().await?;
    Ok(())
}

async fn seed(conn: &mut mysql_async::Conn, tenant: &str, scale: u64) -> anyhow::Result<()> {
    conn.query_drop(format!("DROP DATABASE IF EXISTS lab_{tenant}")).await?;
    conn.query_drop(format!("CREATE DATABASE lab_{tenant} CHARACTER SET utf8mb4")).await?;
    conn.query_drop(format!("USE lab_{tenant}")).await?;
    for ddl in DDL {
        conn.query_drop(*ddl).await?;
    }
    let mut rng = rand::rng();
    let accounts = 5 * scale;
    let providers = 20 * scale;
    let patients = 300 * scale;
    let orders = 600 * scale;
    let mut rows = Vec::new();
    for id in 1..=accounts {
        rows.push(format!("({id}, 'Clinic {tenant} #{id}', 'City {}', 1, NOW(6) - INTERVAL {} DAY)", id % 7, id * 30));
    }
    insert(conn, "accounts", &rows).await?;
    rows.clear();
    let specialties = ["internal_medicine", "pediatrics", "cardiology", "oncology", "family_medicine"];
    for id in 1..=providers {
        rows.push(format!(
            "({id}, {}, '{:010}', 'Dr. {} {}', '{}', 'dr{id}@{tenant}.example', NOW(6))",
            1 + id % accounts,
            1_000_000_000 + id * 7919,
            FIRST.choose(&mut rng).unwrap_or(&"Ana"),
            LAST.choose(&mut rng).unwrap_or(&"Silva"),
            specialties[(id % 5) as usize]
        ));
    }
    insert(conn, "providers", &rows).await?;
    rows.clear();
    for id in 1..=patients {
        rows.push(patient_row(&mut rng, tenant, id));
    }
    insert(conn, "patients", &rows).await?;
    rows.clear();
    let mut results = Vec::new();
    for id in 1..=orders {
        rows.push(order_row(&mut rng, id, patients, providers, accounts));
        for k in 0..3u64 {
            results.push(result_row(&mut rng, id * 10 + k, id));
        }
    }
    insert(conn, "orders", &rows).await?;
    insert(conn, "results", &results).await?;
    eprintln!(
        "seeded lab_{tenant}: {accounts} accounts, {providers} providers, {patients} patients, {orders} orders, {} results",
        results.len()
    );
    Ok(())
}

async fn insert(conn: &mut mysql_async::Conn, table: &str, rows: &[String]) -> anyhow::Result<()> {
    for chunk in rows.chunks(500) {
        conn.query_drop(format!("INSERT INTO {table} VALUES {}", chunk.join(","))).await?;
    }
    Ok(())
}

fn patient_row(rng: &mut impl Rng, tenant: &str, id: u64) -> String {
    format!(
        "({id}, 'MRN-{tenant}-{id:06}', '{}', '{}', '{}-{:02}-{:02}', '{}', '+1-555-{:04}', NOW(6))",
        FIRST.choose(rng).unwrap_or(&"Ana"),
        LAST.choose(rng).unwrap_or(&"Silva"),
        rng.random_range(1930..2020),
        rng.random_range(1..13),
        rng.random_range(1..29),
        ["F", "M", "X"][rng.random_range(0..3)],
        rng.random_range(0..10_000)
    )
}

fn order_row(rng: &mut impl Rng, id: u64, patients: u64, providers: u64, accounts: u64) -> String {
    let status = ["new", "collected", "in_progress", "resulted"][rng.random_range(0..4)];
    format!(
        "({id}, {}, {}, {}, 'LAB-{:05}', '{}', '{status}', NOW(6) - INTERVAL {} MINUTE, {}, {}.{:02}, {})",
        rng.random_range(1..=patients),
        rng.random_range(1..=providers),
        rng.random_range(1..=accounts),
        rng.random_range(100..99_999),
        ["routine", "asap", "stat"][rng.random_range(0..3)],
        rng.random_range(10..10_000),
        if status == "new" { "NULL".to_owned() } else { "NOW(6)".to_owned() },
        rng.random_range(5..900),
        rng.random_range(0..100),
        if rng.random_bool(0.3) { "'fasting sample; recollect if hemolyzed'".to_owned() } else { "NULL".to_owned() }
    )
}

fn result_row(rng: &mut impl Rng, id: u64, order: u64) -> String {
    let (loinc, analyte, unit, lo, hi) = TESTS[rng.random_range(0..TESTS.len())];
    let v: f64 = rng.random_range(lo * 0.5..hi * 1.6);
    let flag = if v < lo * 0.6 {
        "LL"
    } else if v < lo {
        "L"
    } else if v > hi * 1.5 {
        "HH"
    } else if v > hi {
        "H"
    } else {
        "N"
    };
    format!(
        "({id}, {order}, '{loinc}', '{analyte}', {v:.6}, NULL, '{unit}', {lo}, {hi}, '{flag}', NOW(6), \
         '{{\"instrument\": \"cobas-{}\", \"verified\": {}, \"comments\": []}}')",
        rng.random_range(1..9),
        rng.random_bool(0.8)
    )
}

async fn generate(conn: &mut mysql_async::Conn, tenants: &[String], dur: Duration) -> anyhow::Result<u64> {
    let mut rng = rand::rng();
    let start = Instant::now();
    let mut next_id: u64 = 10_000_000 + u64::from(rng.random_range(0..1000u32)) * 10_000;
    let mut n = 0u64;
    while start.elapsed() < dur {
        let t = tenants.choose(&mut rng).context("no tenants")?;
        conn.query_drop(format!("USE lab_{t}")).await?;
        conn.query_drop("START TRANSACTION").await?;
        match rng.random_range(0..10) {
            0..=3 => {
                next_id += 1;
                conn.query_drop(format!("INSERT INTO orders VALUES {}", order_row(&mut rng, next_id, 300, 20, 5)))
                    .await?;
                let rows: Vec<String> = (0..3).map(|k| result_row(&mut rng, next_id * 10 + k, next_id)).collect();
                conn.query_drop(format!("INSERT INTO results VALUES {}", rows.join(","))).await?;
            }
            4..=5 => {
                conn.query_drop(
                    "UPDATE orders SET status = 'resulted', collected_at = COALESCE(collected_at, NOW(6)) \
                     WHERE status IN ('new','collected','in_progress') ORDER BY RAND() LIMIT 2",
                )
                .await?;
            }
            6 => {
                conn.query_drop(format!(
                    "UPDATE results SET value_num = value_num * {:.3}, flag = 'A' ORDER BY RAND() LIMIT 1",
                    rng.random_range(0.9..1.1)
                ))
                .await?;
            }
            7 => {
                conn.query_drop("UPDATE patients SET phone = CONCAT('+1-555-', LPAD(FLOOR(RAND()*10000), 4, '0')), updated_at = NOW(6) ORDER BY RAND() LIMIT 1").await?;
            }
            8 => {
                conn.query_drop("UPDATE orders SET status = 'cancelled' ORDER BY RAND() LIMIT 1").await?;
            }
            _ => {
                conn.query_drop(
                    "DELETE FROM results WHERE order_id IN (SELECT id FROM orders WHERE status = 'cancelled') LIMIT 3",
                )
                .await?;
            }
        }
        conn.query_drop("COMMIT").await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    Ok(n)
}
