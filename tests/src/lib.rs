//! Harness crate for the end-to-end tests in tests/e2e; holds no library code.
