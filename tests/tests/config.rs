//! A bad configuration fails at start with a message naming the key.

use std::process::Command;

use lablake_tests::lablake_bin;

const GOOD: &str = r#"
[kafka]
brokers = "127.0.0.1:29092"

[lake]
bucket = "lablake"
endpoint = "http://127.0.0.1:25000"
allow_http = true

[checkpoint]
endpoint = "http://127.0.0.1:25000"

[[sources]]
kind = "mysql"
name = "main"
url = "mysql://lablake:lablake@127.0.0.1:23306"
server_id = 4242
tenant = { kind = "schema", pattern = "lab_{tenant}" }
"#;

fn check(config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(lablake_bin());
    cmd.arg("--config").arg(&path).arg("check-config");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run lablake (build it with `cargo build -p lablake-cli`)");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_valid_config_passes() {
    let (code, err) = check(GOOD, &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn unknown_key_is_named() {
    let (code, err) = check(&GOOD.replace("brokers =", "brokerz ="), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("brokerz"), "{err}");
}

#[test]
fn unknown_env_override_is_named() {
    let (code, err) = check(GOOD, &[("LABLAKE__KAFKA__NOPE", "1")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn env_override_applies() {
    let (code, err) = check(GOOD, &[("LABLAKE__KAFKA__BROKERS", "not-a-broker")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("kafka.brokers"), "{err}");
}

#[test]
fn bad_url_is_named() {
    let (code, err) = check(
        &GOOD
            .replace("endpoint = \"http://127.0.0.1:25000\"\nallow_http", "endpoint = \"127.0.0.1:25000\"\nallow_http"),
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("lake.endpoint"), "{err}");
    let (code, err) = check(&GOOD.replace("mysql://lablake:lablake@127.0.0.1:23306", "not a url"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sources[0]"), "{err}");
}

#[test]
fn missing_credentials_are_named() {
    let (code, err) = check(&GOOD.replace("lablake:lablake@", ""), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sources[0]"), "{err}");
}

#[test]
fn missing_section_is_named() {
    let (code, err) = check(&GOOD.replace("[checkpoint]\nendpoint = \"http://127.0.0.1:25000\"\n", ""), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("checkpoint"), "{err}");
}

const PG: &str = r#"
[[sources]]
kind = "postgres"
name = "audit"
url = "postgres://lablake@127.0.0.1:25432/lims"
slot = "lablake_audit"
tenant = { kind = "schema", pattern = "lab_{tenant}" }
"#;

#[test]
fn postgres_sources_are_validated_with_named_keys() {
    let (code, err) = check(&format!("{GOOD}{PG}"), &[]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = check(&format!("{GOOD}{}", PG.replace("postgres://", "mysql://")), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sources[1] (name `audit`).url"), "{err}");
    let (code, err) = check(&format!("{GOOD}{}", PG.replace("lablake_audit", "Bad-Slot")), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("slot"), "{err}");
    let (code, err) = check(&format!("{GOOD}{}", PG.replace("name = \"audit\"", "name = \"main\"")), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("duplicate source name"), "{err}");
    let (code, err) = check(&format!("{GOOD}{}", PG.replace("slot =", "slott =")), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("slott"), "{err}");
}

#[test]
fn the_example_config_is_valid() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lablake.toml"))
        .expect("examples/lablake.toml");
    let (code, err) = check(&example, &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn user_table_settings_are_validated_with_named_keys() {
    let ok = format!("{GOOD}\n[user_tables]\npatterns = [\"udt_*\"]\n");
    let (code, err) = check(&ok, &[]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = check(&format!("{GOOD}\n[user_tables]\npatterns = [\"[\"]\n"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("user_tables.patterns"), "{err}");
    let (code, err) = check(&format!("{GOOD}\n[user_tables]\nchunk_rows = 0\n"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("user_tables.chunk_rows"), "{err}");
    let (code, err) = check(&format!("{GOOD}\n[user_tables]\npaterns = []\n"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("paterns"), "{err}");
}

#[test]
fn several_instance_settings_are_validated_with_named_keys() {
    let ok = format!("{GOOD}\n[leases]\nstandby = true\nttl = \"20s\"\n");
    let (code, err) = check(&ok, &[("LABLAKE__CURATE__ASSIGNMENT", "group")]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = check(&format!("{GOOD}\n[leases]\nttl = \"5s\"\n"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("leases.ttl"), "{err}");
    let (code, err) = check(GOOD, &[("LABLAKE__CURATE__SESSION_TIMEOUT", "1s")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("curate.session_timeout"), "{err}");
    let (code, err) = check(GOOD, &[("LABLAKE__CURATE__ASSIGNMENT", "shards")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("assignment") || err.contains("shards"), "{err}");
    let (code, err) = check(&format!("{GOOD}\n[leases]\nstandbi = true\n"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("standbi"), "{err}");
}
