//! End-to-end tests: the real binaries on loopback, driven as a user would. One test binary
//! (`cargo test -p vigil-tests --test e2e`), one module per area.

mod harness;
mod quickstart;
