//! Ballast's control plane: turns one YAML file into a running data plane.
//!
//! - [`config`] loads the file in three stages (raw serde structs → validation that collects
//!   every error with its line and YAML path → the resolved [`config::Config`]). `ballast check`
//!   and `ballast run` share this loader.
//! - [`routes`] builds the data plane's route snapshot (pools, pickers, Maglev tables) off the
//!   hot path and keeps live per-backend state across rebuilds.
//! - [`server`] starts the data plane and the control runtime, reloads and drains.
//! - [`health`] runs active health probes; [`reload`] plans which listeners a reload keeps.
//! - [`admin`] is the admin HTTP API and dashboard; [`status`] and [`metrics`] are what it
//!   reports, read from the data plane's atomics at request time. `admin_conn` (connection
//!   cap and timeouts) and `admin_guard` (Host, Origin and form checks) keep it from being a
//!   way in or a way down.
//!
//! Rules: nothing here runs on the data plane's hot path; errors are typed (thiserror) and say
//! which input was wrong; nothing that comes from the config file is unwrapped.

pub mod admin;
mod admin_conn;
mod admin_guard;
pub mod config;
pub mod discovery;
pub mod fastpath;
pub mod health;
pub mod membership;
pub mod metrics;
pub mod reload;
pub mod routes;
pub mod server;
pub mod state_file;
pub mod status;
pub mod udp_offload;
pub mod upgrade;
