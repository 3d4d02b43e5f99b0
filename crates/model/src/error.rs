use thiserror::Error;

/// Errors of the model crate. Callers branch on the variant.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A Kafka record is not a valid Lablake envelope. Goes to the dead-letter topic.
    #[error("invalid envelope: {0}")]
    InvalidEnvelope(String),
    /// A column type string in an envelope is unknown.
    #[error("unknown column type `{0}`")]
    UnknownType(String),
    /// A value does not fit its column type (names the column, never the value).
    #[error("column `{column}`: {reason}")]
    InvalidValue { column: String, reason: String },
    /// A table pattern or tenant rule in the configuration is invalid.
    #[error("invalid rule `{rule}`: {reason}")]
    InvalidRule { rule: String, reason: String },
}
