// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only)
//
// Ballast's UDP offload: established UDP flows forwarded in the kernel. User space decides
// once per flow (the first datagram: admission, pick, a connected flow socket, as the relay
// always does) and then installs the flow's two translations here: client -> listener becomes
// flow socket -> backend on the way in, and backend -> flow socket becomes listener -> client
// on the way back. This tc ingress program (attached with TCX on every interface the flows
// cross) rewrites each later datagram of the flow, fixes the IP and UDP checksums, and
// redirects it out of the interface its peer's datagrams arrive on, so it never reaches a
// socket.
//
// That interface is learned, not looked up: a datagram of one direction records the interface
// it came in on in the other direction's entry. The first reply (which crosses before any
// datagram of the client's has been seen here) and the second datagram of the client
// (before the backend's) go through the relay; from then on both directions stay in the
// kernel. The FIB helper would need forwarding enabled on the interfaces, which a balancer
// host has no other reason to turn on; the way back is the way in, as routing is symmetric
// for the relay's own sockets.
//
// The flow socket stays open in user space: it holds the port, so the kernel cannot give it
// to another socket, and it still receives what this program leaves alone. Left alone, on
// purpose, and so handled by the relay: anything but IPv4 UDP with a plain 20-byte header,
// fragments, GRO trains (gso_size set), datagrams whose new route the FIB cannot resolve, and
// any datagram of a flow that is not (or no longer) in the table.
//
// The layouts below are mirrored in crates/fastpath/src/udp.rs; a change here is a change
// there.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MAX_FLOWS (1 << 18)
#define MAX_COUNTERS 65535
#define IPPROTO_UDP 17
#define IP_OFFSET_OR_MORE 0x3fff

// One direction of a flow, as it arrives: addresses and ports in network byte order.
struct flow_key {
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
};

// What it becomes, the backend counter it counts against, which way it goes (0: to the
// backend, 1: back to the client), the interface to send it out of (0 until learned), and
// what the program saw of it.
struct flow_value {
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
	__u32 counter;
	__u32 direction;
	__u32 out_ifindex;
	__u64 last_seen_ns;
	__u64 datagrams;
	__u64 bytes;
};

// Datagrams and payload bytes forwarded.
struct traffic {
	__u64 datagrams;
	__u64 bytes;
};

// LRU: an entry the kernel evicts only sends its flow's datagrams back to the relay, which
// still has the flow; nothing is lost.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} udp_flows SEC(".maps");

// Per backend counter and direction: index counter * 2 + direction.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_COUNTERS * 2);
	__type(key, __u32);
	__type(value, struct traffic);
} backend_traffic SEC(".maps");

#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))
#define UDP_OFF (ETH_HLEN + sizeof(struct iphdr))
#define UDP_CSUM_OFF (UDP_OFF + __builtin_offsetof(struct udphdr, check))
#define UDP_SPORT_OFF (UDP_OFF + __builtin_offsetof(struct udphdr, source))
#define UDP_DPORT_OFF (UDP_OFF + __builtin_offsetof(struct udphdr, dest))

// Replaces an address: the IP header checksum, the UDP checksum over the pseudo-header (a
// zero UDP checksum, "none", stays zero), then the bytes.
static __always_inline int rewrite_addr(struct __sk_buff *skb, __u32 offset, __u32 from, __u32 to)
{
	if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, from, to,
				BPF_F_MARK_MANGLED_0 | BPF_F_PSEUDO_HDR | sizeof(to)))
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, sizeof(to)))
		return -1;
	return bpf_skb_store_bytes(skb, offset, &to, sizeof(to), 0);
}

static __always_inline int rewrite_port(struct __sk_buff *skb, __u32 offset, __u16 from, __u16 to)
{
	if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, from, to, BPF_F_MARK_MANGLED_0 | sizeof(to)))
		return -1;
	return bpf_skb_store_bytes(skb, offset, &to, sizeof(to), 0);
}

SEC("classifier")
int ballast_udp_offload(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP) || skb->gso_size)
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_OK;
	if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(IP_OFFSET_OR_MORE)))
		return TC_ACT_OK;
	struct flow_key key = {
		.src = ip->saddr,
		.dst = ip->daddr,
		.sport = udp->source,
		.dport = udp->dest,
	};
	struct flow_value *flow = bpf_map_lookup_elem(&udp_flows, &key);
	if (!flow)
		return TC_ACT_OK;
	__u16 payload = bpf_ntohs(udp->len);
	payload = payload > sizeof(struct udphdr) ? payload - sizeof(struct udphdr) : 0;

	// This datagram's way in is the other direction's way out.
	struct flow_key reverse = {
		.src = flow->dst,
		.dst = flow->src,
		.sport = flow->dport,
		.dport = flow->sport,
	};
	struct flow_value *other = bpf_map_lookup_elem(&udp_flows, &reverse);
	if (other && other->out_ifindex != skb->ingress_ifindex)
		other->out_ifindex = skb->ingress_ifindex;
	// Its own way out is not known yet: the relay sends this one.
	if (!flow->out_ifindex)
		return TC_ACT_OK;

	// The rewrites move packet data: take every old value first.
	struct flow_value to = *flow;
	if (rewrite_addr(skb, IP_SRC_OFF, key.src, to.src) ||
	    rewrite_addr(skb, IP_DST_OFF, key.dst, to.dst) ||
	    rewrite_port(skb, UDP_SPORT_OFF, key.sport, to.sport) ||
	    rewrite_port(skb, UDP_DPORT_OFF, key.dport, to.dport))
		return TC_ACT_SHOT;

	flow->last_seen_ns = bpf_ktime_get_ns();
	__sync_fetch_and_add(&flow->datagrams, 1);
	__sync_fetch_and_add(&flow->bytes, payload);
	__u32 index = to.counter * 2 + (to.direction & 1);
	struct traffic *t = bpf_map_lookup_elem(&backend_traffic, &index);
	if (t) {
		t->datagrams += 1;
		t->bytes += payload;
	}
	return bpf_redirect_neigh(to.out_ifindex, 0, 0, 0);
}

char LICENSE[] SEC("license") = "Dual Apache/GPL";
