//! Ballast's control plane.
pub mod config;
