//! The configuration: what `check-config` and `serve` refuse and how they say so, what the
//! shipped configs are, and the reference (docs/configuration.md) in step with the types.

mod docs;
mod validation;
