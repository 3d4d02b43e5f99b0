//! The docker-compose stack's file is valid (checked with `docker-compose config`,
//! which needs no Docker engine). The test says so and passes when the tool is
//! not installed (Debian package `docker-compose`).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn compose_file_is_valid() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker/docker-compose.yml");
    assert!(file.is_file(), "{} is missing", file.display());
    let out = match Command::new("docker-compose").arg("-f").arg(&file).arg("config").arg("--quiet").output() {
        Ok(out) => out,
        Err(_) => {
            eprintln!("docker-compose is not installed: compose file not validated (apt-get install docker-compose)");
            return;
        }
    };
    assert!(out.status.success(), "docker-compose config failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let env = std::fs::read_to_string(file.with_file_name("compose.env")).expect("docker/compose.env");
    for name in [
        "LABLAKE_MYSQL_URL",
        "LABLAKE_PG_URL",
        "LABLAKE_KAFKA_BROKERS",
        "LABLAKE_S3_ENDPOINT",
        "LABLAKE_DYNAMODB_ENDPOINT",
    ] {
        assert!(env.contains(&format!("export {name}=")), "compose.env does not set {name}");
    }
}
