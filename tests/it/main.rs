//! The one integration-test binary: each module is a rung of the test ladder.

mod interop_serve;
mod pack;
mod restore;
mod serve_env;
mod store;
mod support;
mod tus;
