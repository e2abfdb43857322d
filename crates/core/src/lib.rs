//! billhook's domain core: the canonical event model, money, identifiers, ledger rules, retry
//! policy and webhook signing.
//!
//! Everything here is pure: no async runtime, no SQL, no network. Provider modules, the store and
//! the server build on these types; tests exercise them without any I/O. Money never passes
//! through a float, which the lint below enforces for the whole crate.

#![deny(clippy::float_arithmetic)]

pub mod access;
pub mod entity;
pub mod event;
pub mod identifiers;
pub mod ids;
pub mod ledger;
pub mod money;
pub mod retry;
pub mod schema;
pub mod signing;
pub mod subscription;
pub mod time;
