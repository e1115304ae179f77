//! flightdeck, the controller: AWS adapters, the reconcile loop and the CLI.
//!
//! The decisions live in `flightdeck-core`; this crate observes, executes and serves.

pub mod aws;
pub mod ports;
