//! DNS discovery and the runtime membership API through the real binary (issue 18), with a
//! real dnsmasq started by each test answering from a hosts file it re-reads on SIGHUP (TTL
//! 1 s) and real backends on 127.0.0.2, .3, ... (all of 127.0.0.0/8 reaches loopback).
//!
//! A name answered with 3, then 2, then 4 addresses: the pool follows without a reload, a
//! session to a removed address finishes, and a second instance with the same name picks
//! the same backend for every client (Maglev by source address, clients bound to distinct
//! 127.0.1.x sources). A name gone (NXDOMAIN) keeps its backends for `dns.hold`, then loses
//! them; a name server that stops answering changes nothing. SRV records give targets, ports
//! and weights. The runtime API sets weights, adds and removes backends under load without a
//! failed connection, and the state file brings a drain back after a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::dns::start_dnsmasq_with;
use common::*;

const TOKEN: &str = "discovery-token";
const FOLLOW: Duration = Duration::from_secs(15);

/// Named backends on 127.0.0.{2..=last}, all on one port, each named by its IP.
fn backends_on_one_port(lasts: &[u8]) -> (u16, Vec<KillableBackend>) {
    for _ in 0..20 {
        let port = free_port();
        let mut started = Vec::new();
        for last in lasts {
            let addr: SocketAddr = format!("127.0.0.{last}:{port}").parse().unwrap();
            if std::net::TcpListener::bind(addr).is_err() {
                break;
            }
            started.push(KillableBackend::start(&format!("127.0.0.{last}"), addr));
        }
        if started.len() == lasts.len() {
            return (port, started);
        }
    }
    panic!("no port free on every 127.0.0.x");
}

fn write_hosts(path: &Path, name: &str, lasts: &[u8]) {
    let mut text: String = lasts
        .iter()
        .map(|l| format!("127.0.0.{l} {name}\n"))
        .collect();
    // What the readiness probe asks.
    text.push_str("127.0.0.99 probe.example.test\n");
    std::fs::write(path, text).unwrap();
}

fn hup(peer: &Peer) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &peer.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn token_file() -> String {
    write_config(&format!("{TOKEN}\n")).display().to_string()
}

fn membership(lb: &Ballast, pool: &str) -> serde_json::Value {
    let (code, body) = http(
        lb.admin(),
        "GET",
        &format!("/api/v1/pools/{pool}/membership"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn member_addrs(m: &serde_json::Value) -> BTreeSet<String> {
    m["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_string())
        .collect()
}

fn wait_members(lb: &Ballast, pool: &str, want: &BTreeSet<String>) {
    let ok = wait_until(FOLLOW, || member_addrs(&membership(lb, pool)) == *want);
    assert!(
        ok,
        "membership never became {want:?}: {}\n{}",
        membership(lb, pool),
        lb.log_text()
    );
}

fn addrs(port: u16, lasts: &[u8]) -> BTreeSet<String> {
    lasts
        .iter()
        .map(|l| format!("127.0.0.{l}:{port}"))
        .collect()
}

fn connect_from(front: SocketAddr, source: [u8; 4]) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect_timeout(&front.into(), IO_TIMEOUT).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Client source `n` of [`picks`].
fn source(n: u8) -> [u8; 4] {
    [127, 0, 1, n]
}

/// Who answers a connection from `source` (port chosen by the kernel).
fn ask_from(front: SocketAddr, source: [u8; 4]) -> String {
    let mut s = connect_from(front, source);
    s.write_all(b"?").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply.lines().next().unwrap_or_default().to_string()
}

/// Which backend each of 40 client sources lands on.
fn picks(front: SocketAddr) -> Vec<String> {
    (1..=40u8)
        .map(|n| ask_from(front, [127, 0, 1, n]))
        .collect()
}

fn served(front: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(ask(front, "hi")).or_insert(0) += 1;
    }
    counts
}

#[test]
fn every_record_follows_the_name_without_a_reload_and_instances_agree() {
    if !require_tool("dnsmasq", "dnsmasq-base") {
        return;
    }
    let (port, _backends) = backends_on_one_port(&[2, 3, 4, 5]);
    let hosts = write_config("");
    write_hosts(&hosts, "app.example.test", &[2, 3, 4]);
    let (dns, dns_addr) = start_dnsmasq_with(
        &[
            &format!("--addn-hosts={}", hosts.display()),
            "--local=/example.test/",
            "--local-ttl=1",
            "--neg-ttl=1",
        ],
        "probe.example.test",
        "127.0.0.99",
    );
    let config = format!(
        "admin: {{ listen: 127.0.0.1:0, token_file: \"{}\" }}
dns:
  resolvers: [\"{dns_addr}\"]
  timeout: 500ms
  resolve_interval: {{ min: 200ms, max: 1s }}
  hold: 2s
listeners:
  - {{ name: front, listen: 127.0.0.1:0, pool: p }}
pools:
  - name: p
    algorithm: maglev
    hash_key: source_ip
    table_size: 1009
    backends:
      - {{ address: \"app.example.test:{port}\", resolve: every_record }}
",
        token_file()
    );
    let a = Ballast::run(&config);
    let b = Ballast::run(&config);
    let (front_a, front_b) = (a.addr("front"), b.addr("front"));

    // Three addresses, resolved before the first connection.
    let three = addrs(port, &[2, 3, 4]);
    assert_eq!(member_addrs(&membership(&a, "p")), three);
    let m = membership(&a, "p");
    assert_eq!(m["names"][0]["name"], format!("app.example.test:{port}"));
    assert_eq!(m["backends"][0]["source"], "dns");
    let first = picks(front_a);
    assert_eq!(
        first,
        picks(front_b),
        "two instances disagree on Maglev picks"
    );
    assert_eq!(
        first.iter().collect::<BTreeSet<_>>().len(),
        3,
        "40 sources should reach all three backends: {first:?}"
    );

    // A session to .4 (from a source Maglev sends there) stays open while .4 leaves the name.
    let n = first.iter().position(|p| p == "127.0.0.4").unwrap();
    let mut held = connect_from(front_a, source(u8::try_from(n + 1).unwrap()));
    held.write_all(b"x").unwrap();
    let mut greeting = [0u8; 11];
    held.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"127.0.0.4\nx");
    write_hosts(&hosts, "app.example.test", &[2, 3]);
    hup(&dns);
    let two = addrs(port, &[2, 3]);
    wait_members(&a, "p", &two);
    wait_members(&b, "p", &two);
    assert!(a.wait_for_log("pool membership changed", IO_TIMEOUT));
    let departing = membership(&a, "p")["departing"].clone();
    assert_eq!(
        departing[0]["address"],
        format!("127.0.0.4:{port}"),
        "{departing}"
    );
    held.write_all(b"still there").unwrap();
    let mut echoed = [0u8; 11];
    held.read_exact(&mut echoed).unwrap();
    assert_eq!(
        &echoed, b"still there",
        "the session to a removed address was cut"
    );
    drop(held);
    let now = picks(front_a);
    assert!(now.iter().all(|n| n != "127.0.0.4"), "{now:?}");
    assert_eq!(now, picks(front_b));
    // Maglev moves mostly the keys of the backend that left ("little else": a table of 1009
    // entries and skip collisions move a few more; see balance/maglev.rs).
    let staying: Vec<(&String, &String)> = first
        .iter()
        .zip(&now)
        .filter(|(before, _)| *before != "127.0.0.4")
        .collect();
    let moved = staying
        .iter()
        .filter(|(before, after)| before != after)
        .count();
    assert!(
        moved * 4 <= staying.len(),
        "{moved} of {} keys of staying backends moved",
        staying.len()
    );

    // Four addresses.
    write_hosts(&hosts, "app.example.test", &[2, 3, 4, 5]);
    hup(&dns);
    let four = addrs(port, &[2, 3, 4, 5]);
    wait_members(&a, "p", &four);
    wait_members(&b, "p", &four);
    let after = picks(front_a);
    assert_eq!(after, picks(front_b));
    assert!(after.iter().any(|n| n == "127.0.0.5"), "{after:?}");

    // NXDOMAIN: held for `hold` (2 s), then the pool empties.
    write_hosts(&hosts, "other.example.test", &[2]);
    hup(&dns);
    assert!(wait_until(FOLLOW, || membership(&a, "p")["names"][0]
        ["stale"]
        == true));
    assert_eq!(
        member_addrs(&membership(&a, "p")),
        four,
        "emptied before the hold"
    );
    wait_members(&a, "p", &BTreeSet::new());
    let (code, _) = http(a.admin(), "GET", "/metrics", None);
    assert_eq!(code, 200);

    // Back, then the name server stops answering: the last answer stays.
    write_hosts(&hosts, "app.example.test", &[2, 3]);
    hup(&dns);
    wait_members(&a, "p", &two);
    drop(dns);
    assert!(
        a.wait_for_log("DNS lookup failed; keeping the last answer", FOLLOW),
        "{}",
        a.log_text()
    );
    thread::sleep(Duration::from_millis(1500));
    let m = membership(&a, "p");
    assert_eq!(
        member_addrs(&m),
        two,
        "a failing name server changed the pool"
    );
    assert_eq!(m["names"][0]["stale"], true, "{m}");
    assert!(m["names"][0]["lookups"]["failed"].as_u64().unwrap() > 0);
    let counts = served(front_a, 20);
    assert!(
        counts.keys().all(|k| k == "127.0.0.2" || k == "127.0.0.3"),
        "{counts:?}"
    );
    let metrics = http(a.admin(), "GET", "/metrics", None).1;
    for needle in [
        "ballast_backend_info{",
        "ballast_dns_lookups_total{",
        "ballast_dns_last_success_timestamp_seconds{",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
}

#[test]
fn srv_records_give_targets_ports_and_weights() {
    if !require_tool("dnsmasq", "dnsmasq-base") {
        return;
    }
    let (port_a, mut a) = backends_on_one_port(&[2]);
    let (port_b, mut b) = backends_on_one_port(&[3]);
    // A worse priority: a fallback, serving only once no preferred target can.
    let (port_c, _c) = backends_on_one_port(&[4]);
    let (_dns, dns_addr) = start_dnsmasq_with(
        &[
            "--local=/example.test/",
            "--local-ttl=1",
            "--host-record=a.example.test,127.0.0.2",
            "--host-record=b.example.test,127.0.0.3",
            &format!("--srv-host=_app._tcp.example.test,a.example.test,{port_a},0,30"),
            &format!("--srv-host=_app._tcp.example.test,b.example.test,{port_b},0,10"),
            "--host-record=c.example.test,127.0.0.4",
            &format!("--srv-host=_app._tcp.example.test,c.example.test,{port_c},5,50"),
        ],
        "a.example.test",
        "127.0.0.2",
    );
    let lb = Ballast::run(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}
dns: {{ resolvers: [\"{dns_addr}\"], resolve_interval: {{ min: 200ms, max: 1s }} }}
listeners:
  - {{ name: front, listen: 127.0.0.1:0, pool: p }}
pools:
  - name: p
    backends:
      - {{ address: _app._tcp.example.test }}
"
    ));
    let m = membership(&lb, "p");
    let tiers: BTreeMap<String, (u64, bool)> = m["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                (
                    b["weight"].as_u64().unwrap(),
                    b["backup"].as_bool().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        BTreeMap::from([
            (format!("127.0.0.2:{port_a}"), (30, false)),
            (format!("127.0.0.3:{port_b}"), (10, false)),
            (format!("127.0.0.4:{port_c}"), (50, true)),
        ]),
        "{m}"
    );
    assert_eq!(m["names"][0]["srv"], true);
    // Smooth round robin gives exact shares over whole cycles.
    let counts = served(lb.addr("front"), 80);
    assert_eq!(
        counts,
        BTreeMap::from([("127.0.0.2".to_string(), 60), ("127.0.0.3".to_string(), 20)])
    );
    // With both preferred targets gone, the fallback serves (retries and passive health
    // move each client there; none is refused).
    a[0].kill();
    b[0].kill();
    let counts = served(lb.addr("front"), 20);
    assert_eq!(
        counts,
        BTreeMap::from([("127.0.0.4".to_string(), 20)]),
        "{}",
        lb.log_text()
    );
}

/// Connections through `front` in a loop until stopped; counts the ones that failed.
fn load(
    front: SocketAddr,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut done = 0;
        while !stop.load(Ordering::Relaxed) && done < 20_000 {
            let ok = TcpStream::connect_timeout(&front, IO_TIMEOUT).and_then(|mut s| {
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.write_all(b"x")?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                Ok(!line.is_empty())
            });
            if !matches!(ok, Ok(true)) {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            done += 1;
        }
        done
    })
}

#[test]
fn runtime_api_weights_adds_removes_and_the_state_file_keeps_a_drain() {
    let (port, backends) = backends_on_one_port(&[2, 3, 4]);
    let [a, b, c] = [0, 1, 2].map(|i| backends[i].addr);
    let state = std::env::temp_dir().join(format!("ballast-state-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let config = format!(
        "admin: {{ listen: 127.0.0.1:0, token_file: \"{}\" }}
state_file: \"{}\"
listeners:
  - {{ name: front, listen: 127.0.0.1:0, pool: p }}
pools:
  - name: p
    backends:
      - {{ address: \"{a}\" }}
      - {{ address: \"{b}\" }}
",
        token_file(),
        state.display()
    );
    let path = write_config(&config);
    let lb = Ballast::spawn(&["run", "-c", path.to_str().unwrap()]);
    let front = lb.addr("front");
    let admin = lb.admin();
    let _ = port;

    // Without the token: refused.
    let weight_path = format!("/api/v1/pools/p/backends/{a}/weight");
    let (code, _) = http_body(admin, "POST", &weight_path, None, "{\"weight\": 3}");
    assert_eq!(code, 401);
    let (code, body) = http_body(admin, "POST", &weight_path, Some(TOKEN), "{\"weight\": 3}");
    assert_eq!(code, 200, "{body}");
    assert_eq!(lb.backend("p", a)["runtime_weight"], true);
    let counts = served(front, 40);
    assert_eq!(
        counts,
        BTreeMap::from([("127.0.0.2".to_string(), 30), ("127.0.0.3".to_string(), 10)])
    );
    let (code, _) = http_body(
        admin,
        "POST",
        &weight_path,
        Some(TOKEN),
        "{\"weight\": 999}",
    );
    assert_eq!(code, 400);

    // Add c and remove b under load: no connection fails.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let loader = load(front, stop.clone(), failed.clone());
    let (code, body) = http_body(
        admin,
        "POST",
        "/api/v1/pools/p/backends",
        Some(TOKEN),
        &format!("{{\"address\": \"{c}\"}}"),
    );
    assert_eq!(code, 201, "{body}");
    let (code, _) = http_body(
        admin,
        "POST",
        "/api/v1/pools/p/backends",
        Some(TOKEN),
        &format!("{{\"address\": \"{c}\"}}"),
    );
    assert_eq!(code, 409, "adding it twice");
    assert!(wait_until(IO_TIMEOUT, || served(front, 6).contains_key("127.0.0.4")));
    let (code, body) = http(
        admin,
        "DELETE",
        &format!("/api/v1/pools/p/backends/{b}"),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let done = loader.join().unwrap();
    assert!(done > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "connections failed during add/remove"
    );
    let m = membership(&lb, "p");
    assert_eq!(
        member_addrs(&m),
        [a, c].iter().map(|x| x.to_string()).collect()
    );
    let sources: BTreeMap<String, String> = m["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().into(),
                b["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(sources[&c.to_string()], "runtime");
    assert!(served(front, 12).keys().all(|k| k != "127.0.0.3"));

    // Runtime changes outlive a reload.
    let (code, body) = http(admin, "POST", "/api/v1/reload", Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(member_addrs(&membership(&lb, "p")), member_addrs(&m));
    assert_eq!(lb.backend("p", a)["weight"], 3);

    // Drain a; after a restart, the state file brings back the drain and the changes.
    let (code, _) = http(
        admin,
        "POST",
        &format!("/api/v1/pools/p/backends/{a}/drain"),
        Some(TOKEN),
    );
    assert_eq!(code, 200);
    drop(lb);
    let lb = Ballast::spawn(&["run", "-c", path.to_str().unwrap()]);
    let entry = lb.backend("p", a);
    assert_eq!(entry["state"], "draining", "{entry}");
    assert_eq!(entry["weight"], 3);
    assert_eq!(member_addrs(&membership(&lb, "p")), member_addrs(&m));
    assert!(served(lb.addr("front"), 6).keys().all(|k| k == "127.0.0.4"));
    let _ = std::fs::remove_file(&state);
}
