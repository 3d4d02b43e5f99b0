//! The `lablake` binary's library: configuration, the pipeline stages and
//! their wiring. The binary (`main.rs`) is a thin clap front end.

pub mod config;
pub mod curator;
pub mod lane;
pub mod metrics;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod status;

pub use config::Config;
