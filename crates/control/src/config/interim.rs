// THROWAWAY: replaced by the real loader from the config-loader branch.
#![allow(clippy::unwrap_used)]
use super::model::*;
use std::path::Path;
#[derive(Debug)]
pub struct ConfigError(pub String);
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigError>,
}
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Invalid(String),
}
fn dur(v: &serde_yaml::Value) -> std::time::Duration {
    let s = v.as_str().unwrap();
    if let Some(ms) = s.strip_suffix("ms") {
        return std::time::Duration::from_millis(ms.parse().unwrap());
    }
    if let Some(x) = s.strip_suffix('s') {
        return std::time::Duration::from_secs(x.parse().unwrap());
    }
    if let Some(x) = s.strip_suffix('m') {
        return std::time::Duration::from_secs(60 * x.parse::<u64>().unwrap());
    }
    if let Some(x) = s.strip_suffix('h') {
        return std::time::Duration::from_secs(3600 * x.parse::<u64>().unwrap());
    }
    panic!()
}
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    load_str(
        &std::fs::read_to_string(path).map_err(|e| LoadError::Invalid(e.to_string()))?,
        "",
    )
}
pub fn load_str(text: &str, _f: &str) -> Result<Loaded, LoadError> {
    let v: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| LoadError::Invalid(e.to_string()))?;
    let workers = match v.get("workers").and_then(|w| w.as_u64()) {
        Some(n) => Workers::Count(n as usize),
        None => Workers::Auto,
    };
    let drain_timeout = v
        .get("drain_timeout")
        .map(dur)
        .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
    let listeners = v["listeners"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|l| {
            let listen = match &l["listen"] {
                serde_yaml::Value::String(s) => vec![s.parse().unwrap()],
                serde_yaml::Value::Sequence(x) => x
                    .iter()
                    .map(|s| s.as_str().unwrap().parse().unwrap())
                    .collect(),
                _ => panic!(),
            };
            Listener {
                name: l["name"].as_str().unwrap().into(),
                protocol: Protocol::Tcp,
                listen,
                pool: l["pool"].as_str().unwrap().into(),
                max_connections: l.get("max_connections").and_then(|m| m.as_u64()),
                connect_timeout: l
                    .get("timeouts")
                    .and_then(|t| t.get("connect"))
                    .map(dur)
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                idle_timeout: l
                    .get("timeouts")
                    .and_then(|t| t.get("idle"))
                    .map(dur)
                    .unwrap_or(DEFAULT_IDLE_TIMEOUT),
            }
        })
        .collect();
    let pools = v["pools"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| Pool {
            name: p["name"].as_str().unwrap().into(),
            algorithm: Algorithm::RoundRobin,
            retries: p
                .get("retries")
                .and_then(|r| r.as_u64())
                .map(|r| r as u32)
                .unwrap_or(DEFAULT_RETRIES),
            passive: Some(DEFAULT_PASSIVE),
            backends: p["backends"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|b| Backend {
                    address: b["address"].as_str().unwrap().parse().unwrap(),
                    weight: b.get("weight").and_then(|w| w.as_u64()).unwrap_or(1) as u32,
                    backup: b.get("backup").and_then(|w| w.as_bool()).unwrap_or(false),
                    max_connections: None,
                })
                .collect(),
        })
        .collect();
    Ok(Loaded {
        config: Config {
            workers,
            drain_timeout,
            listeners,
            pools,
        },
        warnings: vec![],
    })
}
