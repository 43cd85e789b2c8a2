//! pgha's integration tests: one crate, one module per area (ripgrep's layout).
//! Tests that touch PostgreSQL create and drop their own clusters; tests that cross hosts
//! use network namespaces. They need root; see README.md, "Tests".

mod common;

mod archive;
mod boot;
mod cli;
mod day2;
mod fence;
mod golden;
mod kept;
mod metrics;
mod monitoring;
mod primary;
mod promote_guard;
mod rewind_undo;
mod secrets;
mod standby;
mod switchover;
mod synchronous;
mod tls;
mod trust;
mod versions;
