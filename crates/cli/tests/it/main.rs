//! billhook's integration tests: one binary, a real server on port 0 per test, real HTTP, a real
//! database per backend.

mod helpers;

mod api;
mod bench;
mod console;
mod delivery;
mod emulator;
mod ingest;
mod ledger;
mod operations;
mod process;
mod scale;
