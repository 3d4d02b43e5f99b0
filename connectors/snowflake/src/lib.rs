//! Snowflake for Lablake: the warehouse stage.
//!
//! * [`Client`] — Snowflake's driver protocol (login with password or
//!   key-pair JWT, statements with bindings, JSON and Arrow results including
//!   chunked ones, session renewal, retries with backoff). See ADR 0008 for
//!   why not an existing crate.
//! * [`KeyPair`] — the RS256 key-pair JWT and public-key fingerprint.
//! * [`Loader`] — one curated batch into the tenant's database: staged COPY,
//!   position-guarded MERGE, load ledger (see [`load`]).
//!
//! Guarantees and limits are in the crate README.

mod client;
mod config;
mod error;
pub mod jwt;
pub mod load;
mod rowset;

pub use client::{Binding, Client, QueryResult, backoff};
pub use config::SnowflakeConfig;
pub use error::SnowflakeError;
pub use jwt::KeyPair;
pub use load::{Batch, BatchColumn, LoadOutcome, Loader, LoaderConfig, snowflake_type};
pub use rowset::{ColumnMeta, Row};
