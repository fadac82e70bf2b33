//! The one integration-test binary: each module is a rung of the test ladder.

// Test code: a failed unwrap is a failed test, and nothing here is an API.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, missing_docs)]

mod cli_send;
mod disk_full;
mod edges;
mod faults;
mod flaky;
mod follow;
mod hostile;
mod incremental;
mod interop_serve;
mod metrics;
mod multinode;
mod nightly;
mod pack;
mod peers;
mod proxy;
mod push;
mod relay;
mod reliability;
mod restore;
mod reverse_proxy;
mod s3;
mod send;
mod serve_env;
mod serve_send;
mod store;
mod support;
mod tls;
mod tus;
