//! Command-line entry points; each subcommand is a thin layer over the library.

pub mod bench;
pub mod embed;
pub mod export;
pub mod loadtest;
pub mod logging;
pub mod predict;
pub mod progress;
pub mod serve;
pub mod train;
pub mod weights;
pub mod worker;
