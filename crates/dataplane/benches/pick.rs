//! Cost of one pick per algorithm at 3, 100 and 1000 backends, and of building Maglev tables.
//!
//! `cargo bench -p ballast-dataplane --bench pick -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ballast_dataplane::balance::{build, Algorithm, HashKey, TimeMetric};
use ballast_dataplane::route::{BackendState, BackendView, FlowKey, PoolView, Protocol};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const ALGORITHMS: [(&str, Algorithm); 6] = [
    ("round_robin", Algorithm::RoundRobin),
    ("least_connections", Algorithm::LeastConnections),
    ("random", Algorithm::Random),
    ("power_of_two", Algorithm::PowerOfTwo),
    (
        "least_time",
        Algorithm::LeastTime {
            metric: TimeMetric::Connect,
        },
    ),
    (
        "maglev",
        Algorithm::Maglev {
            hash_key: HashKey::FiveTuple,
            table_size: 0,
        },
    ),
];

/// Mixed weights, some live load and latency samples, so the pickers do their real comparisons.
fn backends(n: u16) -> Vec<BackendView> {
    (0..n)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            let state = Arc::new(BackendState::new());
            state.active.store(u64::from(i % 7), Ordering::Relaxed);
            state.record_connect_time(Duration::from_micros(100 + u64::from(i % 13) * 10));
            BackendView {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, hi, lo)), 5432),
                weight: 1 + u32::from(i % 4),
                backup: false,
                max_connections: None,
                state,
            }
        })
        .collect()
}

fn pool(algorithm: Algorithm, backends: Vec<BackendView>) -> PoolView {
    PoolView {
        name: Arc::from("bench"),
        picker: build(algorithm, &backends),
        backends: backends.into(),
        retries: 1,
        passive: None,
        send_proxy: None,
        slow_start: 0,
        queue: None,
        waiting: Default::default(),
        backend_tcp: Default::default(),
    }
}

fn flow(n: u32) -> FlowKey {
    FlowKey {
        protocol: Protocol::Tcp,
        client: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(n.wrapping_mul(2_654_435_761))),
            40_000,
        ),
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 5432),
    }
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3u16, 100, 1000] {
        for (name, algorithm) in ALGORITHMS {
            let pool = pool(algorithm, backends(n));
            let keys: Vec<FlowKey> = (0..1024).map(flow).collect();
            let mut k = 0usize;
            group.bench_with_input(BenchmarkId::new(name, n), &pool, |b, pool| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    black_box(pool.picker.pick(black_box(&keys[k]), pool, 0, &[]))
                })
            });
        }
    }
    group.finish();
}

fn maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(10);
    for (backends_n, size) in [
        (100u16, 65_537usize),
        (1000, 65_537),
        (100, 655_373),
        (1000, 655_373),
    ] {
        let list = backends(backends_n);
        let algorithm = Algorithm::Maglev {
            hash_key: HashKey::FiveTuple,
            table_size: size,
        };
        group.bench_with_input(
            BenchmarkId::new(format!("{backends_n}_backends"), size),
            &list,
            |b, list| b.iter(|| black_box(build(algorithm, list))),
        );
    }
    group.finish();
}

criterion_group!(benches, picks, maglev_build);
criterion_main!(benches);
