//! Live reload through the real binary: 20 reloads (API and SIGHUP) under a steady client
//! load that changes weights, adds and removes backends and adds a listener, without one
//! failed connection or one corrupted byte; backends that stay keep their counters; an
//! invalid file changes nothing and is reported.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

const RELOADS: usize = 20;

/// The config of reload `step`: b2 always (its weight changing), b1 removed on some steps,
/// b3 and b4 coming and going, and a second listener from step 10 on.
// `usize::is_multiple_of` needs Rust 1.87; the workspace targets 1.85.
#[allow(clippy::manual_is_multiple_of)]
fn config(step: usize, b: &[NamedBackend]) -> String {
    let mut backends = vec![(b[1].addr, 1 + step % 3)];
    if step % 4 != 1 {
        backends.push((b[0].addr, 1 + step % 2));
    }
    if step > 0 && step % 2 == 0 {
        backends.push((b[2].addr, 1));
    }
    if step > 0 && step % 5 == 0 {
        backends.push((b[3].addr, 2));
    }
    let list: String = backends
        .iter()
        .map(|(addr, weight)| format!("      - {{ address: \"{addr}\", weight: {weight} }}\n"))
        .collect();
    let extra = if step >= 10 {
        "  - { name: extra, listen: 127.0.0.1:0, pool: p }\n"
    } else {
        ""
    };
    format!(
        "workers: 2\nadmin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: front, listen: 127.0.0.1:0, pool: p }}\n{extra}pools:\n  - name: p\n    backends:\n{list}"
    )
}

/// What the clients saw: the backend of every finished session, and every failure.
#[derive(Default)]
struct Seen {
    backends: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
    verified_bytes: AtomicU64,
}

impl Seen {
    fn record(&self, result: Result<(String, usize), String>) {
        match result {
            Ok((name, bytes)) => {
                self.backends.lock().unwrap().push(name);
                self.verified_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
            }
            Err(e) => self.failures.lock().unwrap().push(e),
        }
    }

    fn sessions(&self) -> usize {
        self.backends.lock().unwrap().len() + self.failures.lock().unwrap().len()
    }
}

fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// One short session: sends `payload`, half-closes, reads the greeting and the echo back.
fn exchange(addr: SocketAddr, payload: &[u8]) -> Result<(String, usize), String> {
    let mut s = io(
        "connect",
        std::net::TcpStream::connect_timeout(&addr, IO_TIMEOUT),
    )?;
    io("timeout", s.set_read_timeout(Some(IO_TIMEOUT)))?;
    io("write", s.write_all(payload))?;
    io("shutdown", s.shutdown(Shutdown::Write))?;
    let mut reply = Vec::new();
    io("read", s.read_to_end(&mut reply))?;
    let newline = reply
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| format!("no greeting in {} bytes", reply.len()))?;
    if &reply[newline + 1..] != payload {
        return Err(format!(
            "echo differs: sent {} bytes, got {}",
            payload.len(),
            reply.len() - newline - 1
        ));
    }
    let name = String::from_utf8_lossy(&reply[..newline]).to_string();
    Ok((name, payload.len()))
}

/// Short sessions with random payloads until `stop` (bounded in count and time).
fn short_sessions(addr: SocketAddr, seed: u64, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        let len = rng.gen_range(1..64 * 1024);
        let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        seen.record(exchange(addr, &payload));
    }
}

/// One session held open across every reload, streaming numbered chunks and checking each
/// echo, until `stop`.
fn long_session(
    addr: SocketAddr,
    id: u8,
    stop: Arc<AtomicBool>,
) -> Result<(String, usize), String> {
    let s = io(
        "connect",
        std::net::TcpStream::connect_timeout(&addr, IO_TIMEOUT),
    )?;
    io("timeout", s.set_read_timeout(Some(IO_TIMEOUT)))?;
    let mut writer = io("clone", s.try_clone())?;
    let mut reader = BufReader::new(s);
    let mut verified = 0;
    let mut name = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for chunk in 0u32.. {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let payload: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(31) ^ chunk ^ u32::from(id)) as u8)
            .collect();
        io("write", writer.write_all(&payload))?;
        if chunk == 0 {
            io("greeting", reader.read_line(&mut name))?;
        }
        let mut echo = vec![0u8; payload.len()];
        io("read", reader.read_exact(&mut echo))?;
        if echo != payload {
            return Err(format!("session {id}: chunk {chunk} corrupted"));
        }
        verified += payload.len();
        // Paced so that the sessions span every reload without flooding a 2-core machine.
        thread::sleep(Duration::from_millis(5));
    }
    io("shutdown", writer.shutdown(Shutdown::Write))?;
    let mut rest = Vec::new();
    io("read to end", reader.read_to_end(&mut rest))?;
    if !rest.is_empty() {
        return Err(format!(
            "session {id}: {} unexpected bytes at the end",
            rest.len()
        ));
    }
    Ok((name.trim().to_string(), verified))
}

fn rewrite(path: &Path, yaml: &str) {
    // Rename over the old file so that a reload never reads it half-written.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn backend_counter(lb: &Ballast, addr: SocketAddr, key: &str) -> u64 {
    lb.backend("p", addr)[key].as_u64().unwrap()
}

fn reloads(lb: &Ballast) -> (u64, u64) {
    let status = lb.status();
    let r = &status["reloads"];
    (
        r["success"].as_u64().unwrap(),
        r["failure"].as_u64().unwrap(),
    )
}

#[test]
fn twenty_reloads_under_load_drop_nothing_and_an_invalid_one_changes_nothing() {
    let b: Vec<NamedBackend> = (1..=4)
        .map(|i| named_backend(&format!("b{i}"), Duration::ZERO))
        .collect();
    let path = write_config(&config(0, &b));
    let lb = Ballast::spawn(&["run", "-c", path.to_str().unwrap()]);
    let front = lb.addr("front");
    let admin = lb.admin();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let mut threads = Vec::new();
    for seed in 0..2 {
        let (stop, seen) = (stop.clone(), seen.clone());
        threads.push(thread::spawn(move || {
            short_sessions(front, seed, stop, seen)
        }));
    }
    for id in 0..4 {
        let (stop, seen) = (stop.clone(), seen.clone());
        threads.push(thread::spawn(move || {
            seen.record(long_session(front, id, stop));
        }));
    }
    let progressed = |n: usize| {
        let start = seen.sessions();
        assert!(
            wait_until(IO_TIMEOUT, || seen.sessions() >= start + n),
            "clients stalled"
        );
    };
    progressed(10);

    let mut b2_total = backend_counter(&lb, b[1].addr, "connections_total");
    for step in 1..=RELOADS {
        rewrite(&path, &config(step, &b));
        if step % 2 == 1 {
            let (code, body) = http(admin, "POST", "/api/v1/reload", None);
            assert_eq!(code, 200, "reload {step}: {body}");
            let report: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(report["listeners_kept"]
                .as_array()
                .unwrap()
                .contains(&"front".into()));
        } else {
            lb.signal("HUP");
            assert!(
                wait_until(IO_TIMEOUT, || reloads(&lb).0 == step as u64),
                "SIGHUP reload {step} not applied:\n{}",
                lb.log_text()
            );
        }
        assert_eq!(reloads(&lb), (step as u64, 0));
        let total = backend_counter(&lb, b[1].addr, "connections_total");
        assert!(
            total >= b2_total,
            "b2's counter went back: {b2_total} -> {total}"
        );
        b2_total = total;
        if step == 10 {
            let status = lb.status();
            let listeners = status["listeners"].as_array().unwrap();
            let extra = listeners.iter().find(|l| l["name"] == "extra").unwrap();
            let extra: SocketAddr = extra["addresses"][0].as_str().unwrap().parse().unwrap();
            for i in 0..5 {
                seen.record(exchange(extra, format!("via extra {i}").as_bytes()));
            }
        }
        progressed(10);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    let failures = seen.failures.lock().unwrap().clone();
    let sessions = seen.backends.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(sessions.len() > 200, "only {} sessions", sessions.len());
    assert!(seen.verified_bytes.load(Ordering::Relaxed) > 1 << 20);
    for name in ["b1", "b2", "b3", "b4"] {
        assert!(sessions.iter().any(|s| s == name), "{name} never used");
    }
    // b2 stayed through every reload: its counter saw every session it served, exactly.
    assert!(wait_until(IO_TIMEOUT, || backend_counter(
        &lb,
        b[1].addr,
        "connections_active"
    ) == 0));
    let b2_sessions = sessions.iter().filter(|s| *s == "b2").count() as u64;
    assert_eq!(
        backend_counter(&lb, b[1].addr, "connections_total"),
        b2_sessions
    );

    // An invalid file: refused with its errors, logged, counted; nothing changes.
    let before = lb.status()["pools"].clone();
    let broken = config(RELOADS, &b).replacen("weight: 3", "weight: 0", 1) + "  - name: p\n";
    rewrite(&path, &broken);
    let (code, body) = http(admin, "POST", "/api/v1/reload", None);
    assert_eq!(code, 422, "{body}");
    let refusal: serde_json::Value = serde_json::from_str(&body).unwrap();
    let errors: Vec<&str> = refusal["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("pools[0].backends[0].weight: weight must be between 1 and 256")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("duplicate pool name")),
        "{errors:?}"
    );
    assert!(lb.wait_for_log(
        "reload refused; the running configuration is unchanged",
        IO_TIMEOUT
    ));
    lb.signal("HUP");
    assert!(wait_until(IO_TIMEOUT, || reloads(&lb) == (RELOADS as u64, 2)));
    let after = lb.status()["pools"].clone();
    let shape = |pools: &serde_json::Value| -> Vec<(String, u64)> {
        pools[0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["address"].to_string(), b["weight"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(shape(&before), shape(&after));
    assert!(exchange(front, b"still serving").is_ok());
}
