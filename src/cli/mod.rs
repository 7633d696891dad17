//! Command-line subcommands.

pub mod serve;
