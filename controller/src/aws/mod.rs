//! The real implementations of [`crate::ports`] on the AWS SDK for Rust.
