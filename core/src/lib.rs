//! flightdeck-core: the model and every decision of flightdeck, with no I/O.
//!
//! - [`key`]: the bucket contract (which object keys are requests, markers, mistakes).
//! - [`identity`]: stack names, tags and idempotency tokens.
//! - [`request`]: parsing and checking a user's request.
//! - [`stack`]: the observed stack and what its status means.
//! - [`report`]: what flightdeck writes back (markers, `.cf-status`).
//! - [`requeue`]: backoff for a cluster whose reconcile failed.
//! - [`orphan`]: when a stack whose request is gone may be deleted.
//! - [`snapshot`]: one look at the world, grouped by cluster.
//! - [`admission`]: whether a request may run: values, limits, lifetimes.
//! - [`hint`]: S3 event notifications, reduced to the clusters they name.
//! - [`money`]: exact dollar amounts.
//! - [`nodes`]: a cluster's instances, terminated before its stack is deleted.
//! - [`policy`]: the admission policy (limits.toml): parameters, prices, limits.
//! - [`plan`]: the reconcile table, `plan(observed) -> actions`.
//! - [`lease`]: leader election on one S3 object, and when the leader may act.
//! - [`adopt`]: the older design's stacks, and taking them over.
//! - [`rate`]: a token bucket that keeps calls to a service under a rate.
//! - [`watch`]: stacks in progress, polled in min(K, pages) calls per busy interval.

pub mod admission;
pub mod adopt;
pub mod hint;
pub mod identity;
pub mod key;
pub mod lease;
pub mod money;
pub mod nodes;
pub mod orphan;
pub mod plan;
pub mod policy;
pub mod rate;
pub mod report;
pub mod request;
pub mod requeue;
pub mod snapshot;
pub mod stack;
pub mod watch;
