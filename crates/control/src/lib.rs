//! Ballast's control plane: turns one YAML file into a running data plane.
//!
//! - [`config`] loads the file in three stages (raw serde structs → validation that collects
//!   every error with its line and YAML path → the resolved [`config::Config`]). `ballast check`
//!   and `ballast run` share this loader.
//! - [`routes`] builds the data plane's route snapshot (pools, pickers, Maglev tables) off the
//!   hot path and keeps live per-backend state across rebuilds.
//! - [`server`] starts the data plane and drains it.
//!
//! Rules: nothing here runs on the data plane's hot path; errors are typed (thiserror) and say
//! which input was wrong; nothing that comes from the config file is unwrapped.

pub mod config;
pub mod routes;
pub mod server;
