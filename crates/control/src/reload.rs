//! Which listeners a reload keeps, closes and opens. Pure: it compares the old and new
//! configuration and touches no socket ([`crate::server`] carries the plan out).
//!
//! A listener is kept, sockets and sessions and all, when the new file has one of the same
//! name, protocol and configured addresses (as written: `127.0.0.1:0` stays the port it was
//! given). A listener whose protocol or addresses changed is closed and opened again; its
//! established sessions run on, as those of a removed listener do. A listener that only
//! changed its name (same protocol and fixed addresses, the old name gone, the new one new) is
//! renamed in place: its sockets stay open, so the connections queued on them are not reset.
//!
//! This module owns no file descriptor.

use crate::config::Listener;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerPlan {
    pub keep: Vec<String>,
    /// Removed from the file, or changed: their sockets close.
    pub close: Vec<String>,
    /// New in the file, or changed: new sockets are bound.
    pub open: Vec<String>,
    /// (old name, new name): the same sockets, under the new name.
    pub rename: Vec<(String, String)>,
}

pub fn plan_listeners(old: &[Listener], new: &[Listener]) -> ListenerPlan {
    let mut plan = ListenerPlan::default();
    for listener in new {
        match old.iter().find(|o| o.name == listener.name) {
            Some(o) if o.protocol == listener.protocol && o.listen == listener.listen => {
                plan.keep.push(listener.name.clone());
            }
            Some(_) => {
                plan.close.push(listener.name.clone());
                plan.open.push(listener.name.clone());
            }
            None => plan.open.push(listener.name.clone()),
        }
    }
    for listener in old {
        if !new.iter().any(|n| n.name == listener.name) {
            plan.close.push(listener.name.clone());
        }
    }
    // A closed listener and an opened one with the same protocol and fixed addresses are
    // one listener with a new name. Port 0 is a new port each time it is bound, so never.
    for listener in old {
        if !plan.close.contains(&listener.name) || new.iter().any(|n| n.name == listener.name) {
            continue;
        }
        let fixed = listener.listen.iter().all(|a| a.port() != 0);
        let twin = new.iter().find(|n| {
            fixed
                && plan.open.contains(&n.name)
                && !old.iter().any(|o| o.name == n.name)
                && n.protocol == listener.protocol
                && n.listen == listener.listen
        });
        if let Some(twin) = twin {
            plan.close.retain(|c| *c != listener.name);
            plan.open.retain(|o| *o != twin.name);
            plan.rename.push((listener.name.clone(), twin.name.clone()));
        }
    }
    plan
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn listeners(entries: &[(&str, &str, &str)]) -> Vec<Listener> {
        let mut yaml = String::from("listeners:\n");
        for (name, protocol, listen) in entries {
            yaml.push_str(&format!(
                "  - {{ name: {name}, protocol: {protocol}, listen: \"{listen}\", pool: p }}\n"
            ));
        }
        yaml.push_str("pools:\n  - { name: p, backends: [{ address: 127.0.0.1:9 }] }\n");
        // The loader refuses UDP listeners until the data plane has them; the plan does not
        // care, so build the model directly for those.
        let tcp_only = yaml.replace("protocol: udp", "protocol: tcp");
        let mut config = load_str(&tcp_only, "t.yaml").unwrap().config.listeners;
        for (listener, (_, protocol, _)) in config.iter_mut().zip(entries) {
            if *protocol == "udp" {
                listener.protocol = crate::config::Protocol::Udp;
            }
        }
        config
    }

    #[test]
    fn a_listener_that_only_changed_its_name_is_renamed_in_place() {
        let old = listeners(&[
            ("front", "tcp", "127.0.0.1:7001"),
            ("ephemeral", "tcp", "127.0.0.1:0"),
        ]);
        let new = listeners(&[
            ("edge", "tcp", "127.0.0.1:7001"),
            ("other", "tcp", "127.0.0.1:0"),
        ]);
        let plan = plan_listeners(&old, &new);
        assert_eq!(plan.rename, vec![("front".to_string(), "edge".to_string())]);
        assert_eq!(plan.close, vec!["ephemeral".to_string()]);
        assert_eq!(plan.open, vec!["other".to_string()]);
        assert!(plan.keep.is_empty());
    }

    #[test]
    fn unchanged_listeners_are_kept_and_the_rest_reopened() {
        let old = listeners(&[
            ("same", "tcp", "127.0.0.1:0"),
            ("moved", "tcp", "127.0.0.1:7001"),
            ("gone", "tcp", "127.0.0.1:7002"),
            ("dns", "tcp", "127.0.0.1:7053"),
        ]);
        let new = listeners(&[
            ("same", "tcp", "127.0.0.1:0"),
            ("moved", "tcp", "127.0.0.1:7011"),
            ("dns", "udp", "127.0.0.1:7053"),
            ("fresh", "tcp", "127.0.0.1:7003"),
        ]);
        let plan = plan_listeners(&old, &new);
        assert_eq!(plan.keep, ["same"]);
        assert_eq!(plan.close, ["moved", "dns", "gone"]);
        assert_eq!(plan.open, ["moved", "dns", "fresh"]);
    }

    #[test]
    fn the_same_file_keeps_everything() {
        let old = listeners(&[("a", "tcp", "127.0.0.1:0"), ("b", "tcp", "127.0.0.1:7001")]);
        let plan = plan_listeners(&old, &old);
        assert_eq!(plan.keep, ["a", "b"]);
        assert!(plan.close.is_empty() && plan.open.is_empty());
    }
}
