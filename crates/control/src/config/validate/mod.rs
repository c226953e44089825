//! Stage two: checks the raw document and resolves it into the model, reporting every problem
//! it finds (not just the first) with its path and line, plus warnings for configs that work
//! but probably do not do what was meant.
//!
//! This file runs the checks in order and holds the ones about names; each part of the file
//! has its own module: `global` (`admin`, `workers`), `listener` (and `access` for its
//! access keys), `pool` (algorithms, retries, backends), `health` (active checks),
//! `fastpath` (the kernel fast path, and what `fastpath: socket` cannot be combined with),
//! with `address` and `common` shared by them; `admin` resolves the admin server's own limits.

mod access;
mod access_log;
mod address;
mod admin;
mod common;
mod dns;
mod fastpath;
mod global;
mod health;
mod listener;
mod pool;
mod tcp;

use std::collections::HashMap;

use super::diagnostic::Checked;
use super::diagnostic::Diagnostics;
use super::locate::{child_index, child_key};
use super::model::*;
use super::raw::{Document, Item, RawListener, RawPool};
use common::{parsed_items, resolve_duration, KnownPools};
use dns::{resolve_dns, resolve_state_file};
use fastpath::{check_socket_listeners, check_udp_offload_listeners, resolve_fastpath};
use global::{check_admin_conflicts, resolve_admin, resolve_workers};
use health::check_probe_protocols;
use listener::{check_listen_conflicts, resolve_listener};
use pool::{resolve_pool, warn_unused_pools};

/// The message for values whose features are parsed but not built yet. Every key of the
/// design is built; a future key that is parsed before its feature lands must be refused with
/// this message rather than ignored.
pub const NOT_SUPPORTED_YET: &str = "not supported yet";

/// Most worker threads; more than this is a typo, not a machine.
pub const MAX_WORKERS: i64 = 1024;
/// Largest Maglev table. Each pool has its own, refilled on every backend change; far past a
/// few million entries the refill stalls the control plane for no gain in balance.
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 1 << 22;

/// Stage two. Returns the resolved config when neither stage found an error.
pub fn validate(doc: &Document, diag: &mut Diagnostics<'_>) -> Option<Config> {
    let admin = resolve_admin(doc.admin.as_ref(), diag);
    let workers = resolve_workers(doc.workers.as_ref(), diag);
    let drain_timeout = resolve_duration(
        doc.drain_timeout.as_ref(),
        "drain_timeout",
        DEFAULT_DRAIN_TIMEOUT,
        // Zero is meaningful here: close everything at once on SIGTERM.
        true,
        diag,
    );

    let grace = resolve_duration(
        doc.grace.as_ref(),
        "grace",
        std::time::Duration::ZERO,
        true,
        diag,
    );

    let dns = resolve_dns(doc.dns.as_ref(), diag);
    let state_file = resolve_state_file(doc.state_file.as_deref(), diag);

    let pool_names = unique_names(&doc.pools, "pools", "pool", diag);
    let pools: Vec<Checked<Pool>> = parsed_items(&doc.pools)
        .map(|(index, pool)| resolve_pool(&child_index("pools", index), pool, diag))
        .collect();

    unique_names(&doc.listeners, "listeners", "listener", diag);
    let known_pools = KnownPools {
        names: pool_names,
        section_broken: diag.has_error_at("pools"),
        section_present: doc.pools.is_some(),
    };
    let listeners: Vec<Checked<Listener>> = parsed_items(&doc.listeners)
        .map(|(index, listener)| {
            resolve_listener(
                &child_index("listeners", index),
                listener,
                &known_pools,
                diag,
            )
        })
        .collect();

    let no_listeners = doc.listeners.as_ref().map_or(0, Vec::len) == 0;
    if no_listeners && !diag.has_error_at("listeners") {
        diag.error(
            "listeners",
            "no listeners defined; add at least one under `listeners:`",
        );
    }
    check_listen_conflicts(doc, diag);
    if let Ok(Some(admin)) = &admin {
        check_admin_conflicts(doc, admin.listen, diag);
    }
    check_probe_protocols(doc, diag);
    let fastpath = resolve_fastpath(doc, diag);
    let access_log = access_log::resolve_access_log(doc.access_log.as_ref(), diag);
    check_socket_listeners(doc, &pools, diag);
    check_udp_offload_listeners(doc, diag);
    warn_unused_pools(doc, diag);

    let admin = admin.ok()?;
    let workers = workers.ok()?;
    let drain_timeout = drain_timeout.ok()?;
    let grace = grace.ok()?;
    let fastpath = fastpath.ok()?;
    let access_log = access_log.ok()?;
    let dns = dns.ok()?;
    let state_file = state_file.ok()?;
    let listeners: Vec<Listener> = listeners.into_iter().collect::<Result<_, _>>().ok()?;
    let pools: Vec<Pool> = pools.into_iter().collect::<Result<_, _>>().ok()?;
    if !diag.errors.is_empty() {
        return None;
    }
    Some(Config {
        admin,
        workers,
        drain_timeout,
        grace,
        listeners,
        pools,
        fastpath,
        access_log,
        dns,
        state_file,
    })
}

/// Names every item has, good or broken, or would have: used to judge references.
trait Named {
    fn name(&self) -> Option<&str>;
}

impl Named for RawListener {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl Named for RawPool {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

fn item_name<T: Named>(item: &Item<T>) -> Option<&str> {
    match item {
        Item::Parsed(parsed) => parsed.name(),
        Item::Broken { name } => name.as_deref(),
    }
}

/// Checks the `name` of every item (present, well-formed, unique) and returns all names seen.
fn unique_names<T: Named>(
    items: &Option<Vec<Item<T>>>,
    section: &str,
    what: &str,
    diag: &mut Diagnostics<'_>,
) -> Vec<String> {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let mut names = Vec::new();
    for (index, item) in items.iter().flatten().enumerate() {
        let path = child_key(&child_index(section, index), "name");
        let name = item_name(item);
        if let Item::Parsed(_) = item {
            match name {
                None => diag.error(&path, format!("missing `name`: every {what} needs one")),
                Some(name) => check_name_syntax(&path, name, diag),
            }
        }
        let Some(name) = name else { continue };
        names.push(name.to_owned());
        match first_seen.get(name) {
            Some(&first) => {
                let first_path = child_index(section, first);
                let place = match diag.line_of(&first_path) {
                    Some(line) => format!("{first_path}, line {line}"),
                    None => first_path,
                };
                diag.error(
                    path,
                    format!("duplicate {what} name {name:?} (first defined at {place})"),
                );
            }
            None => {
                first_seen.insert(name, index);
            }
        }
    }
    names
}

/// Names appear in metrics labels, log fields and admin API paths: keep them plain.
fn check_name_syntax(path: &str, name: &str, diag: &mut Diagnostics<'_>) {
    if name.is_empty() {
        diag.error(path, "name must not be empty");
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        diag.error(
            path,
            format!("{name:?}: names may contain only letters, digits, '_', '-' and '.'"),
        );
    }
}
