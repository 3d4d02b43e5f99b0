use rdkafka::error::KafkaError;
use thiserror::Error;

/// Errors of the Kafka bus.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BusError {
    /// The client could not be created (names the configuration key when known).
    #[error("kafka client configuration: {0}")]
    Config(String),
    /// A topic could not be created.
    #[error("creating topic `{topic}`: {reason}")]
    TopicCreate { topic: String, reason: String },
    /// Kafka rejected or lost a record after the producer's own retries.
    /// Nothing after it may be acknowledged upstream.
    #[error("delivery to `{topic}` failed: {source}")]
    Delivery {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// Any other client error (metadata, fetch, assign). Retryable.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The acknowledgement queue was closed (the other side stopped).
    #[error("acknowledgement queue closed")]
    Closed,
}
