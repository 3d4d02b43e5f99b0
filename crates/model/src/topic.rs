//! Per-tenant Kafka topic naming.
//!
//! * change topic: `<prefix>.<tenant>.<database>.<table>`
//! * dead-letter topic: `<prefix>-dlq.<tenant>`
//!
//! Characters Kafka does not allow in topic names (anything but
//! `[A-Za-z0-9._-]`) become `_`. Tenants must already be valid names (see
//! [`crate::tenant::validate_tenant`]), so a tenant's topics can be selected
//! by the prefix `<prefix>.<tenant>.` without ever matching another tenant.

use crate::TableId;

/// The change topic of a table.
pub fn change_topic(prefix: &str, table: &TableId) -> String {
    format!("{prefix}.{}.{}.{}", table.tenant, sanitize(&table.database), sanitize(&table.table))
}

/// The dead-letter topic of a tenant.
pub fn dead_letter_topic(prefix: &str, tenant: &str) -> String {
    format!("{prefix}-dlq.{tenant}")
}

/// The tenant of a change topic, if the topic is one.
pub fn tenant_of_topic<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('.')?;
    let (tenant, rest) = rest.split_once('.')?;
    rest.contains('.').then_some(tenant)
}

/// The (sanitized) table name of a change topic, if the topic is one.
pub fn table_of_topic<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    tenant_of_topic(prefix, topic)?;
    topic.rsplit_once('.').map(|(_, t)| t)
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_per_tenant_and_parse_back() {
        let t = TableId { tenant: "acme".into(), database: "lab_acme".into(), table: "or.ders$".into() };
        let topic = change_topic("lablake", &t);
        assert_eq!(topic, "lablake.acme.lab_acme.or_ders_");
        assert_eq!(tenant_of_topic("lablake", &topic), Some("acme"));
        assert_eq!(table_of_topic("lablake", &topic), Some("or_ders_"));
        assert_eq!(table_of_topic("lablake", "lablake-dlq.acme"), None);
        assert_eq!(tenant_of_topic("lablake", "lablake-dlq.acme"), None);
        assert_eq!(tenant_of_topic("lablake", "other.acme.a.b"), None);
        assert_eq!(dead_letter_topic("lablake", "acme"), "lablake-dlq.acme");
    }
}
