//! The `lablake` binary's library: configuration loading and status
//! rendering. The stages live in `lablake_pipeline`; the binary
//! (`main.rs`) parses arguments and runs one small function per command.

pub mod config;
pub mod status;

pub use config::Config;
