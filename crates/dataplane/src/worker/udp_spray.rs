//! The worker's shell for `udp.per_datagram` listeners (Envoy's
//! `use_per_packet_load_balancing`), for senders that expect no reply (syslog, metrics):
//! no flow is kept, each datagram is balanced on its own, and all of them leave from one
//! unconnected socket per address family that the worker shares between such listeners, one
//! sendmmsg per backend for a batch. A socket per datagram (or per flow) would cost a
//! descriptor and three syscalls for each.
//!
//! Nothing is read back: a reply to the shared socket is dropped by the kernel once the
//! socket's small receive buffer is full, and an unconnected socket learns of no ICMP
//! refusal, so passive health does not see these backends; active health checks do.
//!
//! File descriptors: at most two per worker (IPv4, IPv6), opened on first use and closed with
//! the worker.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use socket2::{Domain, SockAddr, Socket, Type};

use super::udp::client_facing;
use super::Worker;
use crate::proto::proxy_protocol;
use crate::route::{FlowKey, ListenerRoute, Millis, Protocol, ProxyVersion};
use crate::sys::MAX_BATCH;

/// No backend could take the buffer (or its source is over its rate).
const NONE: usize = usize::MAX;
/// A buffer sent on its own, datagram by datagram.
const ALONE: usize = usize::MAX - 1;

/// The worker's shared unconnected send sockets.
#[derive(Default)]
pub(super) struct SpraySockets {
    v4: Option<Socket>,
    v6: Option<Socket>,
}

impl SpraySockets {
    /// The socket for backends of `backend`'s family, opened on first use.
    fn for_backend(&mut self, backend: SocketAddr) -> io::Result<&Socket> {
        let slot = if backend.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        if slot.is_none() {
            let socket = Socket::new(Domain::for_address(backend), Type::DGRAM, None)?;
            socket.set_nonblocking(true)?;
            socket.set_cloexec(true)?;
            // Nothing is read: let the kernel keep as little of any reply as it will.
            let _ = socket.set_recv_buffer_size(1);
            *slot = Some(socket);
        }
        slot.as_ref()
            .ok_or_else(|| io::Error::other("no send socket"))
    }
}

impl Worker {
    /// Datagrams `group` of `udp_in`, all from `client`, each sent to a backend picked for it
    /// alone. A buffer that holds one datagram and needs no header leaves in one sendmmsg
    /// per backend with the others; a coalesced one (UDP_GRO) is cut into its datagrams, and
    /// with `send_proxy_protocol: v2` each datagram gets its header, both sent one by one.
    pub(super) fn spray_datagrams(
        &mut self,
        index: usize,
        route: &Arc<ListenerRoute>,
        group: &[usize],
        client: SocketAddr,
        destination: Option<IpAddr>,
        now: Millis,
    ) {
        let Some(bound) = self.listeners.get(index).and_then(|slot| slot.local) else {
            return;
        };
        let (local, _) = client_facing(bound, destination);
        let key = FlowKey {
            protocol: Protocol::Udp,
            client,
            local,
        };
        let pool = &route.pool;
        let proxy = pool.send_proxy == Some(ProxyVersion::V2);
        // Each datagram is a flow of its own: it must fit the source's rate
        // (`new_flows_per_second_per_source`) before it is balanced.
        let limited = route.per_source.is_some();
        let pick = || {
            if limited && !super::admission::admit_udp_source(route, client.ip(), now, 1) {
                return Err(());
            }
            let picked = pool.picker.pick(&key, pool, now, &[]);
            if picked.is_none() {
                route
                    .state
                    .udp_dropped_no_backend
                    .fetch_add(1, Ordering::Relaxed);
            }
            picked.ok_or(())
        };
        let mut picks = [NONE; MAX_BATCH];
        for (slot, &k) in picks.iter_mut().zip(group) {
            let single = self.udp_in.segments(k).0 == 1;
            *slot = if !single || proxy {
                ALONE
            } else {
                match pick() {
                    Ok(backend) => backend,
                    Err(()) => NONE,
                }
            };
        }
        let picks = &picks[..group.len().min(MAX_BATCH)];
        // The batched buffers, one sendmmsg per backend.
        for (first, &backend_index) in picks.iter().enumerate() {
            if backend_index >= ALONE || picks[..first].contains(&backend_index) {
                continue;
            }
            let Some(backend) = pool.backends.get(backend_index) else {
                continue;
            };
            let Ok(socket) = self.udp_spray.for_backend(backend.addr) else {
                continue;
            };
            let members = || {
                group
                    .iter()
                    .zip(picks)
                    .filter(move |(_, &b)| b == backend_index)
                    .map(|(&k, _)| k)
            };
            let dest = SockAddr::from(backend.addr);
            let sent = match self
                .udp_in
                .send(socket.as_fd(), members(), Some(&dest), None)
            {
                Ok(n) => n,
                Err(e) => {
                    tracing::trace!(listener = %route.name, error = %e, "UDP datagrams dropped");
                    0
                }
            };
            let bytes: u64 = members()
                .take(sent)
                .map(|k| self.udp_in.get(k).map_or(0, |(d, _, _)| d.len() as u64))
                .sum();
            count_sent(route, backend_index, sent as u64, bytes);
        }
        // The rest, datagram by datagram.
        let mut scratch = std::mem::take(&mut self.udp_scratch);
        for (&k, _) in group.iter().zip(picks).filter(|(_, &b)| b == ALONE) {
            let Some((data, _, _)) = self.udp_in.get(k) else {
                continue;
            };
            let size = self.udp_in.segments(k).1.max(1);
            // chunks() yields nothing for an empty datagram, which is still sent.
            let empty = data.is_empty().then_some(data);
            for datagram in data.chunks(size).chain(empty) {
                let Ok(backend_index) = pick() else {
                    continue;
                };
                let Some(backend) = pool.backends.get(backend_index) else {
                    continue;
                };
                let Ok(socket) = self.udp_spray.for_backend(backend.addr) else {
                    continue;
                };
                let payload: &[u8] = if proxy {
                    scratch.clear();
                    proxy_protocol::encode_v2(
                        client,
                        local,
                        proxy_protocol::Transport::Dgram,
                        &mut scratch,
                    );
                    scratch.extend_from_slice(datagram);
                    &scratch
                } else {
                    datagram
                };
                match socket.send_to(payload, &SockAddr::from(backend.addr)) {
                    Ok(_) => count_sent(route, backend_index, 1, datagram.len() as u64),
                    Err(e) => {
                        tracing::trace!(listener = %route.name, error = %e, "UDP datagram dropped");
                    }
                }
            }
        }
        self.udp_scratch = scratch;
    }
}

fn count_sent(route: &ListenerRoute, backend: usize, datagrams: u64, bytes: u64) {
    if let Some(b) = route.pool.backends.get(backend) {
        b.state
            .datagrams_to_backend
            .fetch_add(datagrams, Ordering::Relaxed);
        b.state.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }
}
