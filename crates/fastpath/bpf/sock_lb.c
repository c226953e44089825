// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only)
//
// Ballast's socket-level load balancer: cgroup/connect4, cgroup/sendmsg4, cgroup/recvmsg4 and
// cgroup/getpeername4 hooks, and their IPv6 twins (connect6, sendmsg6, recvmsg6,
// getpeername6) with maps of their own (services6, slots6, origins6). Service ids and counter
// indexes are global: both families share cursors, service_connects and backend_connects. A connect (or an unconnected UDP send) from a process in the
// hooked cgroup to the address of a listener that asks for it is rewritten, inside the
// connect() call, to a backend the control plane has put in the service's table; the client
// then talks to the backend directly and Ballast leaves the data path. getpeername() and UDP
// replies show the listener's address, so the client cannot tell.
//
// The control plane owns every decision that is not per connection: which backends are in a
// service's table (only available ones, weights already expanded into the sequence) and when
// the table changes (a whole new region, switched in by one map update). The hook only picks
// a slot. Connects it cannot serve (no service, empty table, another network namespace, or
// Ballast's own process) are left alone and reach the real listener.
//
// The layouts below are mirrored in crates/fastpath/src/lib.rs; a change here is a change
// there.

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MAX_SERVICES 1024
#define MAX_SLOTS (1 << 18)
#define MAX_SOCKETS 65536

// From the socket and IP headers, which do not mix with the BPF target's includes.
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define ALGORITHM_ROUND_ROBIN 0
#define ALGORITHM_RANDOM 1

// A listener address: IPv4 address and port in network byte order, and the IP protocol.
struct service_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

// Where the service's current table is: `count` slots from `offset` in `slots`.
struct service {
	__u32 offset;
	__u32 count;
	__u32 id;
	__u32 algorithm;
};

// One slot: a backend address (network byte order) and its index in Ballast's per-backend
// counters.
struct backend {
	__u32 addr;
	__u16 port;
	__u16 counter;
};

// What a steered socket was really asked for, keyed by the socket and the backend it got.
struct origin_key {
	__u64 cookie;
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct origin {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

// The IPv6 records: the same fields with a 16-byte address (four words in network byte
// order, as ctx->user_ip6 holds it). Explicit padding keeps hash keys free of holes.
struct service_key6 {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct backend6 {
	__u32 addr[4];
	__u16 port;
	__u16 counter;
};

struct origin_key6 {
	__u64 cookie;
	__u32 addr[4];
	__u16 port;
	__u16 pad;
	__u32 pad2;
};

struct origin6 {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
};

// Written once at load: the network namespace whose sockets are steered, and Ballast's own
// process, whose sockets never are.
struct settings {
	__u64 netns_cookie;
	__u32 ballast_tgid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct service_key);
	__type(value, struct service);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct backend);
} slots SEC(".maps");

// Per-CPU round-robin position of each service: no atomics on the connect path; each CPU walks
// the weighted sequence on its own, so the spread over many connects stays weighted.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} cursors SEC(".maps");

// Steered connects per service and per backend counter index.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u64);
} service_connects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} backend_connects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, struct origin_key);
	__type(value, struct origin);
} origins SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct service_key6);
	__type(value, struct service);
} services6 SEC(".maps");

// Indexed like `slots`: the control plane hands out table regions from one index space.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct backend6);
} slots6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, struct origin_key6);
	__type(value, struct origin6);
} origins6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} config SEC(".maps");

static __always_inline int ours(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct settings *s = bpf_map_lookup_elem(&config, &zero);
	if (!s)
		return 0;
	if (bpf_get_netns_cookie(ctx) != s->netns_cookie)
		return 0;
	// Ballast's own sockets (health probes, tests of its own listener) go where they asked.
	if ((bpf_get_current_pid_tgid() >> 32) == s->ballast_tgid)
		return 0;
	return 1;
}

static __always_inline __u8 protocol_of(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_STREAM)
		return IPPROTO_TCP;
	if (ctx->type == SOCK_DGRAM)
		return IPPROTO_UDP;
	return 0;
}

// The slot a connect to `svc` gets, by its algorithm, or -1.
static __always_inline long pick_slot(struct service *svc)
{
	if (svc->count == 0)
		return -1;
	__u32 id = svc->id;
	__u32 pick;
	if (svc->algorithm == ALGORITHM_RANDOM) {
		pick = bpf_get_prandom_u32() % svc->count;
	} else {
		__u32 *cursor = bpf_map_lookup_elem(&cursors, &id);
		if (!cursor)
			return -1;
		pick = *cursor % svc->count;
		*cursor = pick + 1;
	}
	__u32 index = svc->offset + pick;
	if (index >= MAX_SLOTS)
		return -1;
	return index;
}

static __always_inline void count(__u32 id, __u32 counter)
{
	__u64 *n = bpf_map_lookup_elem(&service_connects, &id);
	if (n)
		*n += 1;
	n = bpf_map_lookup_elem(&backend_connects, &counter);
	if (n)
		*n += 1;
}

// Rewrites the destination in ctx to a backend of its service; remembers the original.
static __always_inline void steer(struct bpf_sock_addr *ctx)
{
	if (!ours(ctx))
		return;
	struct service_key key = {
		.addr = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
		.proto = protocol_of(ctx),
	};
	if (!key.proto)
		return;
	struct service *svc = bpf_map_lookup_elem(&services, &key);
	if (!svc)
		return;
	long slot = pick_slot(svc);
	if (slot < 0)
		return;
	__u32 index = (__u32)slot;
	struct backend *be = bpf_map_lookup_elem(&slots, &index);
	if (!be || be->addr == 0)
		return;
	struct origin_key okey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = be->addr,
		.port = be->port,
	};
	struct origin orig = { .addr = key.addr, .port = key.port };
	// Without the origin getpeername() would show the backend; better to leave the connect
	// alone than to steer it half way.
	if (bpf_map_update_elem(&origins, &okey, &orig, BPF_ANY))
		return;
	ctx->user_ip4 = be->addr;
	ctx->user_port = be->port;
	count(svc->id, be->counter);
}

// Shows the original address where the peer is a backend this socket was steered to.
static __always_inline void restore(struct bpf_sock_addr *ctx)
{
	struct origin_key okey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
	};
	struct origin *orig = bpf_map_lookup_elem(&origins, &okey);
	if (!orig)
		return;
	ctx->user_ip4 = orig->addr;
	ctx->user_port = orig->port;
}

static __always_inline void steer6(struct bpf_sock_addr *ctx)
{
	if (!ours(ctx))
		return;
	struct service_key6 key = {
		.addr = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] },
		.port = (__u16)ctx->user_port,
		.proto = protocol_of(ctx),
	};
	if (!key.proto)
		return;
	struct service *svc = bpf_map_lookup_elem(&services6, &key);
	if (!svc)
		return;
	long slot = pick_slot(svc);
	if (slot < 0)
		return;
	__u32 index = (__u32)slot;
	struct backend6 *be = bpf_map_lookup_elem(&slots6, &index);
	if (!be || be->port == 0)
		return;
	struct origin_key6 okey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = { be->addr[0], be->addr[1], be->addr[2], be->addr[3] },
		.port = be->port,
	};
	struct origin6 orig = {
		.addr = { key.addr[0], key.addr[1], key.addr[2], key.addr[3] },
		.port = key.port,
	};
	if (bpf_map_update_elem(&origins6, &okey, &orig, BPF_ANY))
		return;
	ctx->user_ip6[0] = be->addr[0];
	ctx->user_ip6[1] = be->addr[1];
	ctx->user_ip6[2] = be->addr[2];
	ctx->user_ip6[3] = be->addr[3];
	ctx->user_port = be->port;
	count(svc->id, be->counter);
}

static __always_inline void restore6(struct bpf_sock_addr *ctx)
{
	struct origin_key6 okey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] },
		.port = (__u16)ctx->user_port,
	};
	struct origin6 *orig = bpf_map_lookup_elem(&origins6, &okey);
	if (!orig)
		return;
	ctx->user_ip6[0] = orig->addr[0];
	ctx->user_ip6[1] = orig->addr[1];
	ctx->user_ip6[2] = orig->addr[2];
	ctx->user_ip6[3] = orig->addr[3];
	ctx->user_port = orig->port;
}

SEC("cgroup/connect4")
int ballast_connect4(struct bpf_sock_addr *ctx)
{
	steer(ctx);
	return 1;
}

SEC("cgroup/sendmsg4")
int ballast_sendmsg4(struct bpf_sock_addr *ctx)
{
	steer(ctx);
	return 1;
}

SEC("cgroup/recvmsg4")
int ballast_recvmsg4(struct bpf_sock_addr *ctx)
{
	restore(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int ballast_getpeername4(struct bpf_sock_addr *ctx)
{
	restore(ctx);
	return 1;
}

SEC("cgroup/connect6")
int ballast_connect6(struct bpf_sock_addr *ctx)
{
	steer6(ctx);
	return 1;
}

SEC("cgroup/sendmsg6")
int ballast_sendmsg6(struct bpf_sock_addr *ctx)
{
	steer6(ctx);
	return 1;
}

SEC("cgroup/recvmsg6")
int ballast_recvmsg6(struct bpf_sock_addr *ctx)
{
	restore6(ctx);
	return 1;
}

SEC("cgroup/getpeername6")
int ballast_getpeername6(struct bpf_sock_addr *ctx)
{
	restore6(ctx);
	return 1;
}

char LICENSE[] SEC("license") = "Dual Apache/GPL";
