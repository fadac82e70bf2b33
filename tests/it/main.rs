//! The one integration-test binary: each module is a rung of the test ladder.

mod cli_send;
mod faults;
mod pack;
mod peers;
mod proxy;
mod push;
mod send;
mod support;
