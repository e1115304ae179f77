//! flightdeck, the controller: AWS adapters, the reconcile loop and the CLI.
//!
//! The decisions live in `flightdeck-core`; this crate observes, executes and serves.
//!
//! - [`config`]: the operator's settings, validated.
//! - [`ports`]: one trait per AWS service, returning our types; [`aws`] implements them,
//!   [`fake`] fakes them for tests.
//! - [`reconcile`]: observe and plan; [`execute`] carries plans out; [`notify`] delivers
//!   notices; [`run`] is the loop, with the [`queue`] its workers take clusters from.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, `POST /hints`; [`metrics`] and
//!   [`instrument`] count what happens.
//! - [`app`]: start-up on the real adapters; [`doctor`]: the preflight of an install.
//! - [`adopt`]: `flightdeck adopt`, taking over the older design's stacks.

pub mod adopt;
pub mod app;
pub mod aws;
pub mod config;
pub mod doctor;
pub mod enrol;
pub mod execute;
pub mod fake;
pub mod http;
pub mod instrument;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod offline;
pub mod ports;
pub mod queue;
pub mod reconcile;
pub mod run;
pub mod usage;
