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
// Steered TCP sockets are followed by a sock_ops program: it counts them in `steered_active`
// from the SYN to the close (the live load that least_connections and power_of_two read, and
// that `max_connections` limits), and at the close hands user space one record (bytes each way,
// connect time, duration, or a connect that failed) through the `events` ring buffer, so that
// metrics, access logs and passive health stay true for sessions Ballast never sees.
//
// The layouts below are mirrored in crates/fastpath/src/lib.rs; a change here is a change
// there.

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MAX_SERVICES 1024
#define MAX_SLOTS (1 << 18)
#define MAX_SOCKETS 65536
#define MAX_COUNTERS 65535
// How many slots a pick looks at past a full one, and how many backends least_connections
// compares: bounded so the verifier can prove the loop ends; the control plane keeps tables
// for those algorithms within it.
#define MAX_TRIES 8
#define MAX_SCAN 64
#define EVENTS_BYTES (1 << 22)

// From the socket and IP headers, which do not mix with the BPF target's includes.
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define ALGORITHM_ROUND_ROBIN 0
#define ALGORITHM_RANDOM 1
#define ALGORITHM_LEAST_CONNECTIONS 2
#define ALGORITHM_POWER_OF_TWO 3

// TCP states, as tcp_set_state() reports them to sock_ops (enum in linux/bpf.h).
#define STEER_PENDING 0
#define STEER_COUNTED 1
#define STEER_DONE 2

#define EVENT_CLOSED 1
#define EVENT_CONNECT_FAILED 2

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

// One slot: a backend address (network byte order), its index in Ballast's per-backend
// counters, its weight (least_connections and power_of_two compare load per weight) and the
// most sessions the hook may add to what the relay already has (0: no limit).
struct backend {
	__u32 addr;
	__u16 port;
	__u16 counter;
	__u32 weight;
	__u32 limit;
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
	__u32 weight;
	__u32 limit;
};

// What a pick needs of a slot, whatever its family.
struct slot_info {
	__u32 counter;
	__u32 weight;
	__u32 limit;
};

// A steered TCP socket, in the socket's own storage (freed with it).
struct steered {
	__u64 start_ns;
	__u64 established_ns;
	__u32 service_id;
	__u16 counter;
	__u8 state;
	__u8 pad;
};

// The backend an unconnected UDP socket was given for a service: later datagrams to the same
// service go there too while the backend stays in the table, as the relay keeps a flow.
struct udp_pick {
	__u32 service[4];
	__u16 service_port;
	__u16 counter;
	__u32 backend[4];
	__u16 backend_port;
	__u16 pad;
};

// One finished steered TCP session, for user space. Ports in host order, addresses in network
// byte order (IPv4 in the first word).
struct event {
	__u64 duration_ns;
	__u64 connect_ns;
	__u64 bytes_acked;
	__u64 bytes_received;
	__u32 service_id;
	__u16 counter;
	__u8 kind;
	__u8 family;
	__u32 client[4];
	__u32 backend[4];
	__u16 client_port;
	__u16 backend_port;
	__u32 pad;
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

// Steered TCP sessions per backend counter, from the SYN to the close (sock_ops keeps it).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} steered_active SEC(".maps");

// Sessions the relay has per backend counter, written by the control plane at each sync, so
// that the hook's load and limits see both paths.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} relay_active SEC(".maps");

// 1 while the backend counter is in some service's current table: a UDP socket's earlier
// pick is kept only while its backend is.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_COUNTERS);
	__type(key, __u32);
	__type(value, __u32);
} usable SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct steered);
} steered_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct udp_pick);
} udp_picks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
} events SEC(".maps");

// Session records that found the ring buffer full (user space reads it every 100 ms).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} events_lost SEC(".maps");

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

static __always_inline int slot_info(int v6, __u32 index, struct slot_info *info)
{
	if (v6) {
		struct backend6 *be = bpf_map_lookup_elem(&slots6, &index);
		if (!be)
			return 0;
		info->counter = be->counter;
		info->weight = be->weight;
		info->limit = be->limit;
	} else {
		struct backend *be = bpf_map_lookup_elem(&slots, &index);
		if (!be)
			return 0;
		info->counter = be->counter;
		info->weight = be->weight;
		info->limit = be->limit;
	}
	return 1;
}

// Sessions a backend has on both paths.
static __always_inline __u64 load_of(__u32 counter)
{
	__u64 load = 0;
	__u64 *n = bpf_map_lookup_elem(&steered_active, &counter);
	if (n)
		load += *n;
	n = bpf_map_lookup_elem(&relay_active, &counter);
	if (n)
		load += *n;
	return load;
}

static __always_inline int full(struct slot_info *info)
{
	return info->limit != 0 && load_of(info->counter) >= info->limit;
}

// Load per unit of weight of a below b's, without division.
static __always_inline int lighter(__u64 load_a, __u32 weight_a, __u64 load_b, __u32 weight_b)
{
	return load_a * (__u64)weight_b < load_b * (__u64)weight_a;
}

// From `start`, the first slot whose backend is not full, or -1.
static __always_inline long first_open(struct service *svc, int v6, __u32 start)
{
	for (__u32 i = 0; i < MAX_TRIES; i++) {
		if (i >= svc->count)
			break;
		__u32 index = svc->offset + (start + i) % svc->count;
		struct slot_info info;
		if (!slot_info(v6, index, &info))
			return -1;
		if (!full(&info))
			return index;
	}
	return -1;
}

// The lowest load per weight, scanning from `start` so that ties rotate.
static __always_inline long least_loaded(struct service *svc, int v6, __u32 start)
{
	long best = -1;
	__u64 best_load = 0;
	__u32 best_weight = 1;
	for (__u32 i = 0; i < MAX_SCAN; i++) {
		if (i >= svc->count)
			break;
		__u32 index = svc->offset + (start + i) % svc->count;
		struct slot_info info;
		if (!slot_info(v6, index, &info))
			return -1;
		__u64 load = load_of(info.counter);
		if (info.limit != 0 && load >= info.limit)
			continue;
		if (best < 0 || lighter(load, info.weight, best_load, best_weight)) {
			best = index;
			best_load = load;
			best_weight = info.weight;
		}
	}
	return best;
}

// Two uniform slots of the weighted cycle (so two weighted draws); the lighter wins, the first
// on a tie, and a full one never.
static __always_inline long lighter_of_two(struct service *svc, int v6)
{
	__u32 a = svc->offset + bpf_get_prandom_u32() % svc->count;
	__u32 b = svc->offset + bpf_get_prandom_u32() % svc->count;
	struct slot_info ia, ib;
	if (!slot_info(v6, a, &ia) || !slot_info(v6, b, &ib))
		return -1;
	__u64 load_a = load_of(ia.counter);
	__u64 load_b = load_of(ib.counter);
	int a_open = !(ia.limit != 0 && load_a >= ia.limit);
	int b_open = !(ib.limit != 0 && load_b >= ib.limit);
	if (a_open && (!b_open || !lighter(load_b, ib.weight, load_a, ia.weight)))
		return a;
	if (b_open)
		return b;
	return first_open(svc, v6, a - svc->offset);
}

// The slot a connect to `svc` gets, by its algorithm, or -1 (the connect then reaches the
// listener, which answers as the relay does).
static __always_inline long pick_slot(struct service *svc, int v6)
{
	if (svc->count == 0 || svc->offset >= MAX_SLOTS || svc->count > MAX_SLOTS)
		return -1;
	__u32 id = svc->id;
	long index;
	if (svc->algorithm == ALGORITHM_RANDOM) {
		index = first_open(svc, v6, bpf_get_prandom_u32() % svc->count);
	} else if (svc->algorithm == ALGORITHM_POWER_OF_TWO) {
		index = lighter_of_two(svc, v6);
	} else {
		__u32 *cursor = bpf_map_lookup_elem(&cursors, &id);
		if (!cursor)
			return -1;
		__u32 start = *cursor % svc->count;
		*cursor = start + 1;
		if (svc->algorithm == ALGORITHM_LEAST_CONNECTIONS)
			index = least_loaded(svc, v6, start);
		else
			index = first_open(svc, v6, start);
	}
	if (index < 0 || index >= MAX_SLOTS)
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

// A steered TCP socket is followed from here by sock_ops, which counts it and reports its end.
static __always_inline void follow(struct bpf_sock_addr *ctx, struct service *svc, __u16 counter)
{
	if (ctx->type != SOCK_STREAM)
		return;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return;
	struct steered *st = bpf_sk_storage_get(&steered_sockets, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return;
	st->start_ns = bpf_ktime_get_ns();
	st->established_ns = 0;
	st->service_id = svc->id;
	st->counter = counter;
	st->state = STEER_PENDING;
}

// The backend an unconnected UDP socket already has for the service at addr:port, if it is
// still in a table: 1 with *be filled in.
static __always_inline int earlier_pick(struct bpf_sock_addr *ctx, const __u32 addr[4], __u16 port,
					struct udp_pick **out)
{
	if (ctx->type != SOCK_DGRAM)
		return 0;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	struct udp_pick *pick = bpf_sk_storage_get(&udp_picks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!pick)
		return 0;
	*out = pick;
	if (pick->service_port != port || pick->service[0] != addr[0] || pick->service[1] != addr[1] ||
	    pick->service[2] != addr[2] || pick->service[3] != addr[3])
		return 0;
	__u32 counter = pick->counter;
	__u32 *in_table = bpf_map_lookup_elem(&usable, &counter);
	return in_table && *in_table;
}

static __always_inline void remember_pick(struct udp_pick *pick, const __u32 addr[4], __u16 port,
					  const __u32 backend[4], __u16 backend_port, __u16 counter)
{
	if (!pick)
		return;
	for (int i = 0; i < 4; i++) {
		pick->service[i] = addr[i];
		pick->backend[i] = backend[i];
	}
	pick->service_port = port;
	pick->backend_port = backend_port;
	pick->counter = counter;
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
	__u32 service_addr[4] = { key.addr, 0, 0, 0 };
	__u32 backend_addr[4] = { 0, 0, 0, 0 };
	__u16 backend_port;
	__u16 counter;
	struct udp_pick *pick = 0;
	if (earlier_pick(ctx, service_addr, key.port, &pick) && pick) {
		backend_addr[0] = pick->backend[0];
		backend_port = pick->backend_port;
		counter = pick->counter;
	} else {
		long slot = pick_slot(svc, 0);
		if (slot < 0)
			return;
		__u32 index = (__u32)slot;
		struct backend *be = bpf_map_lookup_elem(&slots, &index);
		if (!be || be->addr == 0)
			return;
		backend_addr[0] = be->addr;
		backend_port = be->port;
		counter = be->counter;
		remember_pick(pick, service_addr, key.port, backend_addr, backend_port, counter);
	}
	struct origin_key okey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = backend_addr[0],
		.port = backend_port,
	};
	struct origin orig = { .addr = key.addr, .port = key.port };
	// Without the origin getpeername() would show the backend; better to leave the connect
	// alone than to steer it half way.
	if (bpf_map_update_elem(&origins, &okey, &orig, BPF_ANY))
		return;
	ctx->user_ip4 = backend_addr[0];
	ctx->user_port = backend_port;
	count(svc->id, counter);
	follow(ctx, svc, counter);
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
	__u32 backend_addr[4];
	__u16 backend_port;
	__u16 counter;
	struct udp_pick *pick = 0;
	if (earlier_pick(ctx, key.addr, key.port, &pick) && pick) {
		for (int i = 0; i < 4; i++)
			backend_addr[i] = pick->backend[i];
		backend_port = pick->backend_port;
		counter = pick->counter;
	} else {
		long slot = pick_slot(svc, 1);
		if (slot < 0)
			return;
		__u32 index = (__u32)slot;
		struct backend6 *be = bpf_map_lookup_elem(&slots6, &index);
		if (!be || be->port == 0)
			return;
		for (int i = 0; i < 4; i++)
			backend_addr[i] = be->addr[i];
		backend_port = be->port;
		counter = be->counter;
		remember_pick(pick, key.addr, key.port, backend_addr, backend_port, counter);
	}
	struct origin_key6 okey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = { backend_addr[0], backend_addr[1], backend_addr[2], backend_addr[3] },
		.port = backend_port,
	};
	struct origin6 orig = {
		.addr = { key.addr[0], key.addr[1], key.addr[2], key.addr[3] },
		.port = key.port,
	};
	if (bpf_map_update_elem(&origins6, &okey, &orig, BPF_ANY))
		return;
	ctx->user_ip6[0] = backend_addr[0];
	ctx->user_ip6[1] = backend_addr[1];
	ctx->user_ip6[2] = backend_addr[2];
	ctx->user_ip6[3] = backend_addr[3];
	ctx->user_port = backend_port;
	count(svc->id, counter);
	follow(ctx, svc, counter);
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

static __always_inline void add_active(__u32 counter, __s64 delta)
{
	__u64 *n = bpf_map_lookup_elem(&steered_active, &counter);
	if (n)
		__sync_fetch_and_add(n, delta);
}

// The end of a steered session, for user space.
static __always_inline void report(struct bpf_sock_ops *skops, struct steered *st, __u8 kind)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&events_lost, &zero);
		if (lost)
			*lost += 1;
		return;
	}
	__u64 now = bpf_ktime_get_ns();
	e->duration_ns = now - st->start_ns;
	e->connect_ns = st->established_ns ? st->established_ns - st->start_ns : 0;
	e->bytes_acked = skops->bytes_acked;
	e->bytes_received = skops->bytes_received;
	e->service_id = st->service_id;
	e->counter = st->counter;
	e->kind = kind;
	e->client_port = (__u16)skops->local_port;
	e->backend_port = (__u16)bpf_ntohl(skops->remote_port);
	e->pad = 0;
	if (skops->family == 10) {
		e->family = 6;
		e->client[0] = skops->local_ip6[0];
		e->client[1] = skops->local_ip6[1];
		e->client[2] = skops->local_ip6[2];
		e->client[3] = skops->local_ip6[3];
		e->backend[0] = skops->remote_ip6[0];
		e->backend[1] = skops->remote_ip6[1];
		e->backend[2] = skops->remote_ip6[2];
		e->backend[3] = skops->remote_ip6[3];
	} else {
		e->family = 4;
		e->client[0] = skops->local_ip4;
		e->client[1] = 0;
		e->client[2] = 0;
		e->client[3] = 0;
		e->backend[0] = skops->remote_ip4;
		e->backend[1] = 0;
		e->backend[2] = 0;
		e->backend[3] = 0;
	}
	// User space reads on a timer: no wake-up per session.
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
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

// Follows the TCP sockets the connect hooks steered: counted from the SYN, reported at the close.
SEC("sockops")
int ballast_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;
	struct steered *st = bpf_sk_storage_get(&steered_sockets, sk, 0, 0);
	if (!st)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (st->state == STEER_PENDING) {
			st->state = STEER_COUNTED;
			add_active(st->counter, 1);
		}
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		st->established_ns = bpf_ktime_get_ns();
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE || st->state != STEER_COUNTED)
			break;
		st->state = STEER_DONE;
		add_active(st->counter, -1);
		report(skops, st, st->established_ns ? EVENT_CLOSED : EVENT_CONNECT_FAILED);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual Apache/GPL";
