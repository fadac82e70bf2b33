//! The one integration-test binary: each module is a rung of the test ladder.

mod pack;
mod support;
