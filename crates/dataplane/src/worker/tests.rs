//! The worker against real sockets on 127.0.0.1, driven step by step (no thread, no poll
//! loop), where an integration test could not choose the order of events.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use arc_swap::ArcSwap;
use mio::Poll;

use super::*;
use crate::balance::{self, Algorithm};
use crate::route::{BackendView, ListenerState, PoolView, Protocol, UdpSettings};

fn route_to(backend: SocketAddr) -> ListenerRoute {
    let views = vec![BackendView {
        addr: backend,
        weight: 1,
        backup: false,
        max_connections: None,
        state: Arc::new(BackendState::new()),
    }];
    let picker = balance::build(Algorithm::RoundRobin, &views);
    let pool = Arc::new(PoolView {
        name: "pool".into(),
        backends: views.into(),
        picker,
        retries: 0,
        passive: None,
        send_proxy: None,
        slow_start: 0,
        queue: None,
        waiting: Default::default(),
        backend_tcp: Default::default(),
    });
    ListenerRoute {
        name: "test".into(),
        protocol: Protocol::Tcp,
        pool,
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_connections: None,
        client_tcp: Default::default(),
        max_lifetime: None,
        access_log: Default::default(),
        udp: UdpSettings::default(),
        tls: None,
        accept_proxy: None,
        acl: None,
        per_source: None,
        udp_offload: None,
        state: Arc::new(ListenerState::default()),
    }
}

/// A worker with one TCP listener on 127.0.0.1 routed to `backend`; returns its address.
fn worker(backend: SocketAddr) -> (Worker, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (_commands_tx, commands) = crossbeam_channel::unbounded();
    let setup = WorkerSetup {
        id: 0,
        poll: Poll::new().unwrap(),
        listeners: vec![BoundListener {
            name: "test".into(),
            socket: BoundSocket::Tcp(listener),
        }],
        routes: Arc::new(ArcSwap::from_pointee(RouteTable::new([route_to(backend)]))),
        commands,
        force_copy: false,
        workers: 1,
        hold_udp: false,
        signals: Default::default(),
    };
    (Worker::new(setup).unwrap(), addr)
}

/// Accepts what is queued on the listener; returns the key of the one new session.
fn accept_one(worker: &mut Worker) -> usize {
    let before: Vec<usize> = worker.sessions.iter().map(|(k, _)| k).collect();
    // The connection may take a moment to reach the accept queue; bounded.
    for _ in 0..1000 {
        worker.accept_all(0, clock::now_ms());
        if let Some((key, _)) = worker.sessions.iter().find(|(k, _)| !before.contains(k)) {
            return key;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no connection accepted");
}

#[test]
fn an_event_for_a_closed_session_does_not_reach_the_session_in_its_slot() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut worker, addr) = worker(backend.local_addr().unwrap());

    let _first_client = TcpStream::connect(addr).unwrap();
    let first = accept_one(&mut worker);
    let serial = worker.sessions[first].serial;
    let stale_client = tokens::session(first, Side::Client, serial);
    let stale_backend = tokens::session(first, Side::Backend, serial);
    assert_eq!(
        worker.session_of(stale_backend),
        Some((first, Side::Backend))
    );

    // The session closes and, in the same batch, a new connection takes its slot.
    worker.close(first, End::ClientError);
    let _second_client = TcpStream::connect(addr).unwrap();
    let second = accept_one(&mut worker);
    assert_eq!(second, first, "the slab reuses the freed slot");

    // Events still queued for the first session's sockets name no session.
    assert_eq!(worker.session_of(stale_client), None);
    assert_eq!(worker.session_of(stale_backend), None);
    let serial = worker.sessions[second].serial;
    assert_eq!(
        worker.session_of(tokens::session(second, Side::Backend, serial)),
        Some((second, Side::Backend))
    );
    worker.close_all();
}
