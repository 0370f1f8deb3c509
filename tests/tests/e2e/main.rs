//! End-to-end tests: the real binaries on loopback, driven as a user would. One test binary
//! (`cargo test -p vigil-tests --test e2e`), one module per area.

mod alertmanager;
mod bad_input;
mod cli;
mod cmdb;
mod config;
mod console;
mod durability;
mod enrollment;
mod floods;
mod grafana;
mod hardening;
mod harness;
mod incident_state;
mod incidents;
mod kill9;
mod liveness;
mod packet_loss;
mod prometheus;
mod quickstart;
mod settings;
mod slas;
mod wire;
