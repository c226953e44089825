#!/usr/bin/env bash
# Ballast side by side with HAProxy (mode tcp), nginx (stream) and a direct client→backend
# connection, on loopback, in one interleaved run. A tool, never a test: it prints a Markdown table
# of figures and ratios (Ballast ÷ each peer, Ballast ÷ direct) and writes it to
# target/bench/latest.md (raw figures in target/bench/latest.tsv).
#
#   scripts/bench-peers.sh                  quick mode (default): 1 round of 3 s per test, < 3 min
#   scripts/bench-peers.sh --full           3 rounds of 10 s per test, medians
#   scripts/bench-peers.sh --workers 2      the same worker count for every balancer
#                                           (Ballast `workers`, HAProxy `nbthread`,
#                                           nginx `worker_processes`)
#   scripts/bench-peers.sh --scaling        also a fifth target, ballast2: the same Ballast binary
#                                           with `workers: 2`, measured in the same interleaved
#                                           run as `ballast` (--workers N, default 1); the table
#                                           gets a `Ballast w2 ÷ Ballast` column
#   scripts/bench-peers.sh --floor          also the target floor (TCP tests only): a minimal
#                                           relay that makes Ballast's system calls and nothing
#                                           else (crates/dataplane/examples/floor_relay.rs)
#   scripts/bench-peers.sh --baseline PATH  also the target baseline: another Ballast binary (the
#                                           "before" build of a change) with the same config and
#                                           worker count as `ballast`; the table gets a
#                                           `Ballast ÷ baseline` column
#   scripts/bench-peers.sh --socket         also the target socket ("Ballast socket LB"): the same
#                                           Ballast binary with `fastpath: socket` on every
#                                           listener; the clients of every test run in a cgroup
#                                           that the BPF hooks steer; the table gets socket ÷
#                                           direct, ÷ HAProxy, ÷ nginx and ÷ Ballast columns
#   scripts/bench-peers.sh --topology netns UDP across hosts instead, in network namespaces:
#                                           direct (routed), nginx, the Ballast relay and
#                                           Ballast with the UDP offload (fastpath:
#                                           udp_offload) in one interleaved run; see
#                                           scripts/bench/udp-netns.sh (--rounds, --duration)
#   scripts/bench-peers.sh --upgrade        client-visible errors during binary upgrades instead:
#                                           Ballast's `ballast upgrade`, HAProxy's master-worker
#                                           reload (kill -USR2) and a naive Ballast restart
#                                           beside the old process, under wrk with
#                                           `Connection: close`, in one interleaved run; see
#                                           scripts/bench/upgrade.sh (--rounds, --upgrades,
#                                           --duration, --ballast PATH, --out; its --help)
#   scripts/bench-peers.sh --help           every option
#
# Interleaved: each test runs against every target in turn before the next test starts, and each
# round starts with the next target, so slow drifts of a shared machine hit every target alike.
# Scaling (--scaling): two runs of a shared 2-CPU machine differ more than 1 worker from 2 workers
# do, so the question "does Ballast with `workers: 2` fall behind `workers: 1` on any test?" is
# answered in one run: ballast2 is one more target, with its own config (ballast.yaml.in rendered
# with workers 2) and ports, measured like every other balancer (CPU, RSS, pinning, idle memory).
# Floor (--floor): what Ballast's design can reach at all. floor_relay uses the same mio event
# loop and the same calls per connection and per byte (accept4, a non-blocking connect, read and
# write through 16 KiB until a read fills it, then splice through a 1 MiB pipe, a source out of
# epoll's read interest while its destination is full, shutdown, close) with no routing,
# balancing, metrics, timers or limits. Ballast ÷ floor near 1 means its
# features cost nothing measurable, and what is left is the kernel's work on those calls.
# Baseline (--baseline PATH): a change's before and after in one run, for the reason given for
# --scaling above. Build the "before" commit elsewhere (a git worktree), then
#   scripts/bench-peers.sh --ballast AFTER/target/release/ballast --baseline BEFORE/target/release/ballast
# baseline is rendered from the same ballast.yaml.in (--workers N, ports base+600+K) and measured
# like `ballast`; Ballast ÷ baseline is the change's effect, read like the peers' ratios.
# Socket LB (--socket, root and a cgroup2 mount needed): what the socket fast path
# (docs/runbooks.md, "The socket fast path") gives a client on the same host. Its config is
# ballast.yaml.in rendered for ports base+700+K, with `fastpath: socket` added to every listener
# (they are all plain round-robin pools with nothing the fast path refuses; `ballast check`
# runs on the result), an admin server on base+709 and `fastpath.socket_lb` naming a cgroup the
# script creates under the cgroup2 mount (ballast-bench-PID, removed on exit), with `mode:
# required`. The clients of every test for this target (iperf3 -c, sockperf, wrk,
# redis-benchmark, dnsperf, the idle-session client) run inside that cgroup; the servers and
# every other target's clients stay outside, so only this target is steered. After each test
# the script reads the listener's counters from /api/v1/status: `fastpath_connections_total`
# (connects, and for unconnected UDP datagrams, steered by the hook) and what the relay took
# (`connections_total`, `udp_flows_total`); the table lists both per test, and a figure measured
# while the relay carried more than 1 % of the sessions gets a footnote. The balancer CPU rows
# show what steered sessions cost Ballast (nothing but the status reads).
# Tests (the balancer's CPU is utime+stime from /proc/PID/stat, all its processes):
#   bulk      iperf3 TCP, 1 stream: Gbit/s, and the balancer's CPU seconds per GB moved
#   pp_tcp    sockperf TCP ping-pong RTT p50/p99, client, balancer and server all on CPU 0
#   conn      wrk with `Connection: close` against an nginx returning an empty 200: new conn/s,
#             and balancer CPU per connection
#   redis     redis-benchmark GET, 50 clients: requests/s, and balancer CPU per GET
#   pp_udp    sockperf UDP ping-pong RTT p50/p99, all on CPU 0 (HAProxy: no UDP)
#   udp       sockperf UDP one-way at a fixed offered rate: datagrams/s the server received, loss
#             (and where: the balancer's or the server's receive buffer), CPU per datagram
#   dns       dnsperf against dnsmasq answering a fixed name: queries/s, CPU per query
#   dns_mix   the same with 64 names of 64 different lengths, so consecutive queries (and
#             replies) differ in size, as real DNS traffic does: Ballast sends runs of
#             same-sized datagrams as one UDP_SEGMENT buffer, which one fixed name favours
#   idle      memory per idle TCP session: RSS before/after 8 000 idle sessions (held by a separate
#             client process, scripts/bench/idle_sessions.py), and each balancer's peak RSS
#
# A missing tool or peer, or a failed run, gives `n/a` with the reason in that cell; the rest of
# the table is still measured. Every process the script starts is stopped by PID on exit. It uses
# its own temp dir and loopback ports from --port-base N (default 21000): N+1..N+308, up to
# N+408 with --scaling, N+508 with --floor, N+608 with --baseline and N+709 with --socket; keep
# them below the ephemeral range (net.ipv4.ip_local_port_range).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$ROOT/scripts/bench"

# ---------------------------------------------------------------- options
MODE=quick
WORKERS=1
SCALING=0
SCALING_WORKERS=2              # workers of the ballast2 target (--scaling)
FLOOR=0                        # the floor target (--floor)
BASELINE_BIN=""                # the baseline target's binary (--baseline PATH)
SOCKET=0                       # the socket target (--socket): Ballast's socket fast path
PORT_BASE=21000
DURATION=""
ROUNDS=""
TARGETS="direct,haproxy,nginx,ballast"
TESTS="bulk,pp_tcp,conn,redis,pp_udp,udp,dns,dns_mix,idle"
INSTALL=1
BUILD=1
BALLAST_BIN=""
OUT=""
UDP_RATE=200000
IDLE_N=8000
WRK_CONNS=32
REDIS_CLIENTS=50
DNS_CLIENTS=4
DNS_OUTSTANDING=100
NGINX_BULK_BUFFER=${NGINX_BULK_BUFFER:-256k}   # env overrides, for tuning the peers
HAPROXY_PIPESIZE=${HAPROXY_PIPESIZE:-1048576}  # 0: the kernel default (64 KiB)
PROFILE_TEST=""
KEEP_TMP=0
SERVE=0

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<EOF
Options:
  --quick | --full          mode (default quick: 1 round x 3 s; full: 3 rounds x 10 s)
  --topology netns          UDP across network namespaces (scripts/bench/udp-netns.sh, which
                            takes --rounds N and --duration S); every other option is this one's
  --upgrade                 errors during binary upgrades under load (scripts/bench/upgrade.sh:
                            Ballast upgrade, HAProxy -W reload, Ballast restart beside; it takes
                            --rounds N (default 3), --upgrades K (default 8), --interval S,
                            --duration S, --targets, --port-base N (default 23000), --ballast
                            PATH, --no-build, --out FILE (default target/bench/upgrade.md),
                            --keep-tmp); every other option is this one's
  --workers N               worker count of every balancer (default 1); with --scaling, of every
                            balancer but ballast2
  --scaling                 add the target ballast2: the same Ballast binary with workers: 2
                            (its own config and ports, base+400+K), interleaved with the others;
                            the table gets a Ballast w2 column and a Ballast w2 ÷ Ballast ratio
  --duration S              seconds per measurement (overrides the mode)
  --rounds N                rounds (overrides the mode); figures are medians
  --floor                   add the target floor: the minimal relay floor_relay (built with
                            cargo, ports base+500+K), measured on the TCP tests; the table
                            gets a Ballast ÷ floor column
  --baseline PATH           add the target baseline: the Ballast binary at PATH (a "before"
                            build) with the same config and workers as ballast (ports
                            base+600+K), interleaved with the others; the table gets a
                            baseline column and a Ballast ÷ baseline ratio
  --socket                  add the target socket (Ballast socket LB): the same Ballast binary
                            with fastpath: socket on every listener (ports base+700+K, admin
                            base+709), its clients in a cgroup the script makes and removes;
                            needs root and cgroup v2; the table gets socket ÷ direct, ÷ HAProxy,
                            ÷ nginx and ÷ Ballast columns and the steering counts per test
  --targets LIST            subset of direct,haproxy,nginx,ballast,ballast2,floor,baseline,socket
                            (ballast2 implies --scaling, floor --floor, socket --socket,
                            baseline needs --baseline PATH; each flag adds its target)
  --tests LIST              subset of $TESTS
  --port-base N             first loopback port (default $PORT_BASE; uses N+1..N+308, with
                            --scaling N+1..N+408, --floor ..N+508, --baseline ..N+608,
                            --socket ..N+709; keep them below the ephemeral range)
  --udp-rate N              offered datagrams/s for the one-way UDP test (default $UDP_RATE)
  --idle-sessions N         idle TCP sessions for the memory test (default $IDLE_N)
  --ballast PATH            use this binary instead of building target/release/ballast
  --no-build                do not run cargo build (use the existing target/release/ballast)
  --no-install              do not apt-get install missing tools
  --profile TEST            perf record Ballast (call graphs) during TEST; data and report in
                            target/bench/perf-TEST.{data,txt} (ballast2, with --scaling:
                            perf-TEST-w2.{data,txt}; baseline: perf-TEST-baseline.{data,txt};
                            socket: perf-TEST-socket.{data,txt}), next to --out
  --out FILE                Markdown output (default target/bench/latest.md)
  --keep-tmp                keep the temp dir (configs, logs) for inspection
  --serve S                 start the backends and balancers (ballast2, floor, baseline, socket
                            too), print their ports and PIDs (and the socket target's cgroup),
                            keep them up for S seconds (for perf/strace by hand), then clean up
EOF
}

ORIG_ARGS="$*"
# The namespace topology is its own script: other peers, other tests, another topology.
for arg in "$@"; do
  if [ "$arg" = netns ]; then
    exec "$(dirname "$0")/bench/udp-netns.sh" "$@"
  fi
done
# So are binary upgrades: other targets, other load, errors rather than speed.
for arg in "$@"; do
  if [ "$arg" = --upgrade ]; then
    exec "$(dirname "$0")/bench/upgrade.sh" "$@"
  fi
done
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --workers) WORKERS="$2"; shift ;;
    --workers=*) WORKERS="${1#*=}" ;;
    --scaling) SCALING=1 ;;
    --floor) FLOOR=1 ;;
    --socket) SOCKET=1 ;;
    --baseline) BASELINE_BIN="$2"; shift ;;
    --baseline=*) BASELINE_BIN="${1#*=}" ;;
    --duration) DURATION="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --targets) TARGETS="$2"; shift ;;
    --tests) TESTS="$2"; shift ;;
    --port-base) PORT_BASE="$2"; shift ;;
    --udp-rate) UDP_RATE="$2"; shift ;;
    --idle-sessions) IDLE_N="$2"; shift ;;
    --ballast) BALLAST_BIN="$2"; BUILD=0; shift ;;
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    --profile) PROFILE_TEST="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --keep-tmp) KEEP_TMP=1 ;;
    --serve) SERVE="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$MODE" = full ]; then
  : "${DURATION:=10}" "${ROUNDS:=3}"
  REDIS_N=600000
else
  : "${DURATION:=3}" "${ROUNDS:=1}"
  REDIS_N=150000
fi
case "$WORKERS" in ''|*[!0-9]*) echo "--workers takes a number" >&2; exit 2 ;; esac
IFS=, read -r -a _targets <<<"$TARGETS"
for t in "${_targets[@]}"; do
  case "$t" in
    direct|haproxy|nginx|ballast) ;;
    ballast2) SCALING=1 ;;
    floor) FLOOR=1 ;;
    socket) SOCKET=1 ;;
    baseline) [ -n "$BASELINE_BIN" ] || { echo "target baseline needs --baseline PATH" >&2; exit 2; } ;;
    *) echo "unknown target: $t (--targets takes a subset of direct,haproxy,nginx,ballast,ballast2,floor,baseline,socket)" >&2; exit 2 ;;
  esac
done
# --scaling: ballast2 is one more target, last in the list unless --targets placed it
if [ "$SCALING" = 1 ]; then
  case ",$TARGETS," in *,ballast2,*) ;; *) TARGETS="$TARGETS,ballast2" ;; esac
fi
if [ "$FLOOR" = 1 ]; then
  case ",$TARGETS," in *,floor,*) ;; *) TARGETS="$TARGETS,floor" ;; esac
fi
if [ -n "$BASELINE_BIN" ]; then
  case ",$TARGETS," in *,baseline,*) ;; *) TARGETS="$TARGETS,baseline" ;; esac
fi
if [ "$SOCKET" = 1 ]; then
  case ",$TARGETS," in *,socket,*) ;; *) TARGETS="$TARGETS,socket" ;; esac
fi
[ "$SCALING" = 1 ] && [ "$WORKERS" = "$SCALING_WORKERS" ] \
  && echo "note: --workers $WORKERS with --scaling: ballast and ballast2 both run $WORKERS workers" >&2
# every port is PORT_BASE + a target offset (up to 300; 400 with --scaling, 500 with --floor, 600
# with --baseline, 700 with --socket) + a backend key
# (1..8): they must be valid ports (else an error) and should stay below the ephemeral range (else
# a warning), where the clients' own connections and the balancers' connections to the backends
# take their source ports
case "$PORT_BASE" in ''|*[!0-9]*) echo "--port-base takes a number" >&2; exit 2 ;; esac
PORT_TOP=$((PORT_BASE + 308 + 100 * SCALING))
[ "$FLOOR" = 1 ] && PORT_TOP=$((PORT_BASE + 508))
[ -n "$BASELINE_BIN" ] && PORT_TOP=$((PORT_BASE + 608))
[ "$SOCKET" = 1 ] && PORT_TOP=$((PORT_BASE + 709))
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null)
if [ "$PORT_BASE" -lt 1024 ] || [ "$PORT_TOP" -gt 65535 ]; then
  echo "--port-base $PORT_BASE: ports $((PORT_BASE + 1))..$PORT_TOP must lie in 1025..65535" >&2; exit 2
fi
if [ -n "$EPHEMERAL_LOW" ] && [ "$PORT_TOP" -ge "$EPHEMERAL_LOW" ]; then
  echo "warning: --port-base $PORT_BASE: ports up to $PORT_TOP reach the ephemeral range (from" \
    "$EPHEMERAL_LOW): a client's or balancer's own connection may take one; pick a lower base" >&2
fi
[ -n "$OUT" ] || OUT="$ROOT/target/bench/latest.md"
OUTDIR="$(dirname "$OUT")"
mkdir -p "$OUTDIR"
RAW_OUT="${OUT%.md}.tsv"
META_OUT="${OUT%.md}.meta"
NCPU=$(nproc)
ALL_CPUS="0-$((NCPU - 1))"
T0=$(date +%s)

log() { printf '[%4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
in_list() { case ",$2," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ---------------------------------------------------------------- processes we start, by PID
TMP="$(mktemp -d /tmp/ballast-bench.XXXXXX)"
declare -a STARTED=()          # "pid:starttime" of every background process started here
declare -A PIDOF=()            # name -> pid
SOCK_CG=""                     # the socket target's cgroup (--socket), made here, removed on exit

# A PID plus its start time (field 22 of /proc/PID/stat, unchanged by exec) names one process:
# a PID that died and was reused by someone else is left alone.
start_time() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }
ours() { local entry="$1"; [ -n "$(start_time "${entry%%:*}")" ] && [ "$(start_time "${entry%%:*}")" = "${entry#*:}" ]; }

cleanup() {
  local entry i alive
  trap - EXIT INT TERM
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    entry="${STARTED[$i]}"
    ours "$entry" && kill -TERM "${entry%%:*}" 2>/dev/null
  done
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    alive=0
    for entry in "${STARTED[@]}"; do ours "$entry" && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.3
  done
  for entry in "${STARTED[@]}"; do ours "$entry" && kill -KILL "${entry%%:*}" 2>/dev/null; done
  # the socket target's cgroup: empty once its clients are gone (rmdir fails while one is left)
  if [ -n "$SOCK_CG" ] && [ -d "$SOCK_CG" ]; then
    for _ in $(seq 50); do rmdir "$SOCK_CG" 2>/dev/null && break; sleep 0.1; done
    [ -d "$SOCK_CG" ] && log "could not remove the cgroup $SOCK_CG: $(tr '\n' ' ' <"$SOCK_CG/cgroup.procs" 2>/dev/null)"
  fi
  if [ "$KEEP_TMP" = 1 ]; then
    log "temp dir kept: $TMP"
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# start_bg NAME CMD...: run CMD in the background, logs in $TMP/NAME.{out,err}; records its PID.
start_bg() {
  local name="$1"; shift
  "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null 9>&- &
  local pid=$!
  STARTED+=("$pid:$(start_time "$pid")")
  PIDOF[$name]=$pid
}

# stop_bg NAME [SIGNAL]: stop one process started by start_bg and wait for it.
stop_bg() {
  local name="$1" sig="${2:-TERM}" pid="${PIDOF[$1]:-}" i
  [ -n "$pid" ] || return 0
  kill "-$sig" "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  local keep=() entry
  for entry in "${STARTED[@]}"; do [ "${entry%%:*}" = "$pid" ] || keep+=("$entry"); done
  STARTED=("${keep[@]}")
  unset "PIDOF[$name]"
}

alive() { local pid="${PIDOF[$1]:-}"; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

# wait_port tcp|udp PORT SECONDS [NAME]: until the port is bound (or NAME's process exited)
wait_port() {
  local proto="$1" port="$2" secs="$3" name="${4:-}" i flag
  [ "$proto" = tcp ] && flag=-Hltn || flag=-Hlun
  for ((i = 0; i < secs * 10; i++)); do
    [ -n "$(ss $flag "sport = :$port" 2>/dev/null)" ] && return 0
    [ -n "$name" ] && ! alive "$name" && return 1
    sleep 0.1
  done
  return 1
}

port_busy() { [ -n "$(ss -Hltnu "sport = :$1" 2>/dev/null)" ]; }

# ---------------------------------------------------------------- ports
# backend offsets; a target's port for backend K: direct = base+K, HAProxy = base+100+K,
# nginx = base+200+K, Ballast = base+300+K, ballast2 (--scaling) = base+400+K,
# floor (--floor) = base+500+K, baseline (--baseline) = base+600+K, socket (--socket) =
# base+700+K and its admin server base+709
K_IPERF=1 K_SPTCP=2 K_SPUDP=3 K_SPUDPT=4 K_HTTP=5 K_REDIS=6 K_DNS=7 K_IDLE=8 K_ADMIN=9
TCP_KEYS="IPERF SPTCP HTTP REDIS IDLE"
UDP_KEYS="SPUDP SPUDPT DNS"
target_offset() {
  case "$1" in direct) echo 0 ;; haproxy) echo 100 ;; nginx) echo 200 ;; ballast) echo 300 ;; ballast2) echo 400 ;;
    floor) echo 500 ;; baseline) echo 600 ;; socket) echo 700 ;; esac
}
# the balancers of this run, in start order (ballast2 only with --scaling, floor with --floor,
# baseline with --baseline)
BALANCERS="haproxy nginx ballast"
[ "$SCALING" = 1 ] && BALANCERS="$BALANCERS ballast2"
[ "$FLOOR" = 1 ] && BALANCERS="$BALANCERS floor"
[ -n "$BASELINE_BIN" ] && BALANCERS="$BALANCERS baseline"
[ "$SOCKET" = 1 ] && BALANCERS="$BALANCERS socket"
port_of() { echo $((PORT_BASE + $(target_offset "$1") + $2)); }
be_port() { local k="K_$1"; echo $((PORT_BASE + ${!k})); }
lb_port() { local k="K_$2"; echo $((PORT_BASE + $(target_offset "$1") + ${!k})); }

# render TEMPLATE TARGET OUTFILE [WORKERS]: fill @WORKERS@ (default --workers), @TMP@, @BE_X@,
# @LB_X@ (the ports of TARGET) and friends
render() {
  local tmpl="$1" target="$2" outf="$3" workers="${4:-$WORKERS}" args=() key
  args+=(-e "s|@WORKERS@|$workers|g" -e "s|@TMP@|$TMP|g")
  args+=(-e "s|@HAPROXY_PIPESIZE@|$HAPROXY_PIPESIZE|g")
  args+=(-e "s|@NGINX_BULK_BUFFER@|$NGINX_BULK_BUFFER|g" -e "s|@LOAD_STREAM@|${LOAD_STREAM:-}|g")
  for key in $TCP_KEYS $UDP_KEYS; do
    args+=(-e "s|@BE_${key}@|$(be_port "$key")|g")
    [ -n "$target" ] && args+=(-e "s|@LB_${key}@|$(lb_port "$target" "$key")|g")
  done
  sed "${args[@]}" "$tmpl" >"$outf"
}

# ---------------------------------------------------------------- results
# in our temp dir while running (two runs at once must not mix), copied next to $OUT at the end
RAW="$TMP/results.tsv"
META="$TMP/meta"
: >"$RAW"
# put TEST TARGET VALUE [NOTE]: VALUE is a number, NA (NOTE says why) or - (not meaningful)
put() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(printf '%s' "${4:-}" | tr '\t\n' '  ' | cut -c1-160)" >>"$RAW"
  log "  $1 $2: $3${4:+ ($4)}"
}
declare -A DOWN=()             # target -> why it cannot be measured

# ---------------------------------------------------------------- /proc helpers
# lb_pids TARGET: every process of that balancer (nginx: master and workers; HAProxy and Ballast,
# ballast2, baseline and socket too, are one process whatever their worker count: their workers are
# threads; the floor relay is one process with one thread)
lb_pids() {
  local pid
  case "$1" in
    haproxy|ballast|ballast2|baseline|socket|floor) pid="${PIDOF[$1]:-}"; [ -n "$pid" ] && echo "$pid" ;;
    nginx)
      pid="${PIDOF[nginx]:-}"
      [ -n "$pid" ] || return 0
      echo "$pid"
      pgrep -P "$pid" 2>/dev/null ;;
  esac
}
# cpu_ticks PIDS...: utime+stime summed (clock ticks)
cpu_ticks() {
  local pid total=0 v
  for pid in "$@"; do
    v=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
# status_kib FIELD PIDS...: a /proc/PID/status field (VmRSS, VmHWM) summed, in KiB
status_kib() {
  local field="$1" pid total=0 v; shift
  for pid in "$@"; do
    v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# udp_drops PORT: receive-buffer drops of the UDP sockets bound to 127.0.0.1:PORT (/proc/net/udp)
udp_drops() {
  awk -v p="$(printf '0100007F:%04X' "$1")" '$2 == p {d += $NF} END {print d + 0}' /proc/net/udp 2>/dev/null
}

# put_cpu TEST TARGET TICKS OPS: balancer CPU microseconds per operation ("-" for direct)
put_cpu() {
  if [ "$2" = direct ]; then put "$1" direct -; return; fi
  if [ -z "$4" ] || [ "$4" = 0 ]; then put "$1" "$2" NA "no operations counted"; return; fi
  put "$1" "$2" "$(awk -v c="$3" -v hz="$CLK_TCK" -v n="$4" 'BEGIN{printf "%.2f", c / hz / n * 1e6}')"
}

pin_target() {   # pin_target TARGET CPULIST: every thread of every process of the balancer
  local pid
  for pid in $(lb_pids "$1"); do taskset -a -p -c "$2" "$pid" >/dev/null 2>&1; done
}

# target_ready TARGET TEST...: prints why the target cannot run, or nothing
target_ready() {
  local t="$1"
  [ "$t" = direct ] && return 0
  if [ -n "${DOWN[$t]:-}" ]; then echo "${DOWN[$t]}"; return; fi
  if ! alive "$t"; then
    DOWN[$t]="$t exited during the run (see its log)"
    echo "${DOWN[$t]}"
  fi
}

# ---------------------------------------------------------------- socket target (--socket)
# the listener of ballast.yaml.in that serves each test
declare -A SOCK_LISTENER=([bulk]=bulk [pp_tcp]=pingpong [conn]=http [redis]=redis
  [pp_udp]=udp-pingpong [udp]=udp-throughput [dns]=dns [dns_mix]=dns [idle]=idle)
declare -A SOCK_STEERED=() SOCK_RELAYED=()   # test -> summed over rounds
# sock_status FILTER: a Python expression on the socket target's /api/v1/status (as `s`)
sock_status() {
  curl -s --max-time 3 "http://127.0.0.1:$(lb_port socket ADMIN)/api/v1/status" 2>/dev/null \
    | python3 -c "import json, sys
try:
    s = json.load(sys.stdin)
except Exception:
    sys.exit(1)
print($1)" 2>/dev/null
}
# sock_counters LISTENER: "steered relayed" — connects (UDP: datagrams sent unconnected, or
# connects) the hook steered, and the sessions the relay took: TCP connections, UDP flows
sock_counters() {
  sock_status "' '.join(str(l['fastpath_connections_total']) + ' ' + str(l['connections_total'] + l.get('udp_flows_total', 0)) for l in s['listeners'] if l['name'] == '$1')"
}
# render_socket OUTFILE: ballast.yaml.in for the ports of `socket`, every listener with
# `fastpath: socket`, an admin server and the fast path on the cgroup SOCK_CG
render_socket() {
  render "$HERE/ballast.yaml.in" socket "$TMP/socket-base.yaml"
  {
    printf 'admin: { listen: "127.0.0.1:%s" }\n' "$(lb_port socket ADMIN)"
    printf 'fastpath:\n  socket_lb: { cgroup: "%s", mode: required }\n' "$SOCK_CG"
    # after each listener's `pool:` line (two-space list items under `listeners:`)
    awk '/^[a-z_]+:/ {in_l = ($1 == "listeners:")}
         {print}
         in_l && /^    pool: / {print "    fastpath: socket"}' "$TMP/socket-base.yaml"
  } >"$1"
}

# ---------------------------------------------------------------- profile (optional)
# Ballast during --profile TEST: perf-TEST.{data,txt}; ballast2 (--scaling): perf-TEST-w2.{data,txt};
# baseline (--baseline): perf-TEST-baseline.{data,txt}
PERF_PID=""
PERF_BASE=""
profile_start() {   # profile_start TEST TARGET
  [ "$1" = "$PROFILE_TEST" ] && have perf || return 0
  case "$2" in
    ballast) PERF_BASE="$OUTDIR/perf-$1" ;;
    ballast2) PERF_BASE="$OUTDIR/perf-$1-w$SCALING_WORKERS" ;;
    baseline) PERF_BASE="$OUTDIR/perf-$1-baseline" ;;
    socket) PERF_BASE="$OUTDIR/perf-$1-socket" ;;
    *) return 0 ;;
  esac
  [ -n "${PIDOF[$2]:-}" ] || return 0
  env --default-signal=INT perf record -F 1999 -g -p "${PIDOF[$2]}" -o "$PERF_BASE.data" \
    >"$TMP/perf.out" 2>"$TMP/perf.err" &
  PERF_PID=$!
  STARTED+=("$PERF_PID:$(start_time "$PERF_PID")")
  sleep 0.3
}
profile_stop() {
  [ -n "$PERF_PID" ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null
  wait "$PERF_PID" 2>/dev/null
  PERF_PID=""
  {
    echo "# self time by symbol (perf report --no-children --sort dso,symbol -g none)"
    timeout 120 perf report -i "$PERF_BASE.data" --no-children --sort dso,symbol \
      -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
    echo
    echo "# time including callees (perf report --children --sort symbol -g none)"
    timeout 120 perf report -i "$PERF_BASE.data" --children --sort symbol \
      -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -80
  } >"$PERF_BASE.txt"
  log "  profile: $PERF_BASE.{data,txt}"
}

# ---------------------------------------------------------------- tests
# Each test_X TARGET appends its figures with put. They never abort the run. Every client
# command starts with "${CLIENT[@]}" (set by run_one): `env` (runs it as is) for every target
# but socket, whose clients join its cgroup first (sh writes its own PID to cgroup.procs, then
# execs the client: the same PID, so start_bg and stop_bg still name the client itself).
CLIENT=(env)

test_bulk() {
  local t="$1" port why pids c0 c1 parsed bps bytes
  have iperf3 || { put bulk_gbps "$t" NA "iperf3 not installed"; return; }
  alive iperf3 || { put bulk_gbps "$t" NA "iperf3 server not running"; return; }
  port=$(lb_port "$t" IPERF)
  pids=$(lb_pids "$t")
  c0=$(cpu_ticks $pids)
  profile_start bulk "$t"
  timeout -k 2 $((DURATION + 15)) "${CLIENT[@]}" iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -J \
    --connect-timeout 3000 >"$TMP/iperf.json" 2>"$TMP/iperf.err"
  profile_stop
  c1=$(cpu_ticks $pids)
  parsed=$(python3 - "$TMP/iperf.json" <<'EOF' 2>&1
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("ERR iperf3 gave no JSON (timeout?)"); sys.exit()
if d.get("error"):
    print("ERR", d["error"]); sys.exit()
s = d["end"]["sum_received"]
print(s["bits_per_second"], s["bytes"])
EOF
)
  if [ "${parsed%% *}" = ERR ] || [ -z "$parsed" ]; then
    put bulk_gbps "$t" NA "iperf3: ${parsed#ERR }"
    [ "$t" = direct ] || put bulk_cpu "$t" NA "no transfer"
    return
  fi
  read -r bps bytes <<<"$parsed"
  put bulk_gbps "$t" "$(awk -v b="$bps" 'BEGIN{printf "%.3f", b / 1e9}')"
  if [ "$t" = direct ]; then
    put bulk_cpu "$t" -
  else
    put bulk_cpu "$t" "$(awk -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v by="$bytes" 'BEGIN{printf "%.4f", (c / hz) / (by / 1e9)}')"
  fi
}

# sockperf ping-pong; proto tcp|udp; everything on CPU 0
test_pingpong() {
  local t="$1" proto="$2" key port out p50 p99 flag=()
  if [ "$proto" = tcp ]; then key=SPTCP; flag=(--tcp); else key=SPUDP; fi
  have sockperf || { put "pp_${proto}_p50" "$t" NA "sockperf not installed"; put "pp_${proto}_p99" "$t" NA "sockperf not installed"; return; }
  alive "sockperf-$proto" || { put "pp_${proto}_p50" "$t" NA "sockperf server not running"; put "pp_${proto}_p99" "$t" NA "sockperf server not running"; return; }
  port=$(lb_port "$t" "$key")
  [ "$t" = direct ] || pin_target "$t" 0
  profile_start "pp_$proto" "$t"
  out=$(timeout -k 2 $((DURATION + 10)) "${CLIENT[@]}" taskset -c 0 sockperf ping-pong "${flag[@]}" -i 127.0.0.1 \
    -p "$port" -t "$DURATION" --full-rtt 2>&1)
  profile_stop
  [ "$t" = direct ] || pin_target "$t" "$ALL_CPUS"
  p50=$(awk '/percentile 50.000 =/ {print $NF}' <<<"$out")
  p99=$(awk '/percentile 99.000 =/ {print $NF}' <<<"$out")
  if [ -z "$p50" ] || [ -z "$p99" ]; then
    local why
    why=$(grep -m1 -iE 'error|refused|timeout' <<<"$out")
    put "pp_${proto}_p50" "$t" NA "sockperf: ${why:-no percentiles (timed out or no replies)}"
    put "pp_${proto}_p99" "$t" NA "sockperf: ${why:-no percentiles (timed out or no replies)}"
    return
  fi
  put "pp_${proto}_p50" "$t" "$p50"
  put "pp_${proto}_p99" "$t" "$p99"
}

test_conn() {
  local t="$1" port out rps errs pids c0 c1
  have wrk || { put conn_rate "$t" NA "wrk not installed"; return; }
  alive nginx-http || { put conn_rate "$t" NA "nginx HTTP backend not running"; return; }
  port=$(lb_port "$t" HTTP)
  pids=$(lb_pids "$t")
  c0=$(cpu_ticks $pids)
  profile_start conn "$t"
  out=$(timeout -k 2 $((DURATION + 10)) "${CLIENT[@]}" wrk -t1 -c"$WRK_CONNS" -d"${DURATION}s" --timeout 2s \
    -H 'Connection: close' "http://127.0.0.1:$port/" 2>&1)
  profile_stop
  c1=$(cpu_ticks $pids)
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  errs=$(grep -m1 -E 'Socket errors|Non-2xx' <<<"$out" | sed 's/^ *//')
  if [ -z "$rps" ]; then
    put conn_rate "$t" NA "wrk: $(tail -1 <<<"$out")"
    return
  fi
  put conn_rate "$t" "$rps" "$errs"
  put_cpu conn_cpu "$t" $((c1 - c0)) "$(awk '/requests in/ {print $1; exit}' <<<"$out")"
}

test_redis() {
  local t="$1" port out rps pids c0 c1
  have redis-benchmark || { put redis_get "$t" NA "redis-benchmark not installed"; return; }
  alive redis || { put redis_get "$t" NA "redis-server not running"; return; }
  port=$(lb_port "$t" REDIS)
  pids=$(lb_pids "$t")
  c0=$(cpu_ticks $pids)
  profile_start redis "$t"
  # redis-benchmark retries forever when it cannot connect: always under timeout
  out=$(timeout -k 2 $((DURATION * 4 + 20)) "${CLIENT[@]}" redis-benchmark -h 127.0.0.1 -p "$port" \
    -c "$REDIS_CLIENTS" -n "$REDIS_N" -t get --csv 2>&1)
  profile_stop
  c1=$(cpu_ticks $pids)
  rps=$(awk -F'","' '/^"GET/ {print $2}' <<<"$out")
  if [ -z "$rps" ]; then
    put redis_get "$t" NA "redis-benchmark: $(tail -1 <<<"$out" | cut -c1-80)"
    return
  fi
  put redis_get "$t" "$rps"
  put_cpu redis_cpu "$t" $((c1 - c0)) "$REDIS_N"
}

test_udp() {
  local t="$1" port out sent secs recv srvlog pids c0 c1 d_lb0 d_lb1 d_srv
  have sockperf || { put udp_rate "$t" NA "sockperf not installed"; put udp_loss "$t" NA "sockperf not installed"; return; }
  port=$(lb_port "$t" SPUDPT)
  # a fresh server per run: it prints the datagrams it received when interrupted
  start_bg sockperf-udpt env --default-signal=INT sockperf server -i 127.0.0.1 -p "$(be_port SPUDPT)"
  if ! wait_port udp "$(be_port SPUDPT)" 5; then
    put udp_rate "$t" NA "sockperf server did not start"; put udp_loss "$t" NA "sockperf server did not start"
    stop_bg sockperf-udpt; return
  fi
  pids=$(lb_pids "$t")
  c0=$(cpu_ticks $pids)
  d_lb0=$(udp_drops "$port")
  profile_start udp "$t"
  out=$(timeout -k 2 $((DURATION + 10)) "${CLIENT[@]}" sockperf throughput -i 127.0.0.1 -p "$port" -t "$DURATION" \
    --mps="$UDP_RATE" -m 64 2>&1)
  profile_stop
  sleep 0.5   # let the balancer flush what it still holds
  c1=$(cpu_ticks $pids)
  # where datagrams were lost: receive-buffer drops of the balancer's listener and the server
  d_lb1=$(udp_drops "$port"); d_srv=$(udp_drops "$(be_port SPUDPT)")
  stop_bg sockperf-udpt INT
  srvlog=$(cat "$TMP/sockperf-udpt.out" "$TMP/sockperf-udpt.err" 2>/dev/null)
  # "sockperf: Total of 400107 messages sent in 2.000 sec" / "sockperf: Total 393006 messages received"
  sent=$(awk '/Total of [0-9]+ messages sent in/ {print $4; exit}' <<<"$out")
  secs=$(awk '/Total of [0-9]+ messages sent in/ {print $8; exit}' <<<"$out")
  recv=$(awk '/Total [0-9]+ messages received/ {print $3; exit}' <<<"$srvlog")
  if [ -z "$sent" ] || [ -z "$secs" ]; then
    put udp_rate "$t" NA "sockperf client: $(grep -m1 -i error <<<"$out" | cut -c1-80)"
    put udp_loss "$t" NA "sockperf client failed"
    return
  fi
  if [ -z "$recv" ]; then
    put udp_rate "$t" NA "sockperf server printed no count"; put udp_loss "$t" NA "no server count"
    return
  fi
  local where="dropped by the server socket: $d_srv"
  [ "$t" = direct ] || where="$where, by the balancer's listener: $((d_lb1 - d_lb0))"
  put udp_rate "$t" "$(awk -v r="$recv" -v s="$secs" 'BEGIN{printf "%.0f", r / s}')"
  put udp_loss "$t" "$(awk -v r="$recv" -v s="$sent" 'BEGIN{l = 100 * (1 - r / s); if (l < 0) l = 0; printf "%.2f", l}')" \
    "$where of $sent sent"
  # per datagram the balancer took in (sent minus its listener's drops): what it worked on,
  # whether or not the server then kept up
  put_cpu udp_cpu "$t" $((c1 - c0)) $((sent - (d_lb1 - d_lb0)))
}

# test_dns TARGET [ID QUERY-FILE]: dnsperf through TARGET; ID names the figures (dns, dns_mix)
test_dns() {
  local t="$1" id="${2:-dns}" queries="${3:-$TMP/dns-queries.txt}" port out qps lost pids c0 c1
  have dnsperf || { put "${id}_qps" "$t" NA "dnsperf not installed"; return; }
  alive dnsmasq || { put "${id}_qps" "$t" NA "dnsmasq not running"; return; }
  port=$(lb_port "$t" DNS)
  pids=$(lb_pids "$t")
  c0=$(cpu_ticks $pids)
  profile_start "$id" "$t"
  out=$(timeout -k 2 $((DURATION + 15)) "${CLIENT[@]}" dnsperf -s 127.0.0.1 -p "$port" -d "$queries" \
    -l "$DURATION" -c "$DNS_CLIENTS" -q "$DNS_OUTSTANDING" -t 2 2>&1)
  profile_stop
  c1=$(cpu_ticks $pids)
  qps=$(awk '/Queries per second:/ {print $4}' <<<"$out")
  lost=$(awk '/Queries lost:/ {print $3, $4}' <<<"$out")
  if [ -z "$qps" ]; then
    put "${id}_qps" "$t" NA "dnsperf: $(grep -m1 -iE 'error|fatal' <<<"$out" | cut -c1-80)"
    return
  fi
  case "$lost" in
    "0 "*|"") put "${id}_qps" "$t" "$qps" ;;
    *) put "${id}_qps" "$t" "$qps" "lost $lost" ;;
  esac
  put_cpu "${id}_cpu" "$t" $((c1 - c0)) "$(awk '/Queries completed:/ {print $3; exit}' <<<"$out")"
}

# memory per idle session: RSS of the balancer before and after IDLE_N idle sessions
test_idle() {
  local t="$1" pids before after n port line why i
  [ "$t" = direct ] && { put idle_kib direct -; return; }
  [ -n "$PYTHON" ] || { put idle_kib "$t" NA "python3 not installed"; return; }
  alive idle-sink || { put idle_kib "$t" NA "idle sink not running"; return; }
  port=$(lb_port "$t" IDLE)
  pids=$(lb_pids "$t")
  before=$(status_kib VmRSS $pids)
  start_bg idle-client "${CLIENT[@]}" "$PYTHON" "$HERE/idle_sessions.py" client --port "$port" --count "$IDLE_N" \
    --timeout 30 --hold 90
  # it holds its sockets until we stop it by PID (or --hold runs out)
  line=""
  for ((i = 0; i < 400; i++)); do
    line=$(grep -m1 '^ready' "$TMP/idle-client.out" 2>/dev/null)
    [ -n "$line" ] && break
    alive idle-client || break
    sleep 0.1
  done
  n=${line#ready }
  sleep 1   # let the balancer settle (deferred frees, pipe returns)
  after=$(status_kib VmRSS $pids)
  local fds=0 pid
  for pid in $pids; do fds=$((fds + $(ls "/proc/$pid/fd" 2>/dev/null | wc -l))); done
  why=$(head -c 160 "$TMP/idle-client.err" 2>/dev/null | tr '\n' ' ')
  stop_bg idle-client
  if [ -z "$line" ]; then
    put idle_kib "$t" NA "idle client: ${why:-no answer}"
  elif [ "$n" -lt "$IDLE_N" ]; then
    put idle_kib "$t" NA "$why"
  else
    put idle_kib "$t" "$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN{printf "%.2f", (a - b) / n}')" \
      "$(awk -v f="$fds" -v n="$n" 'BEGIN{printf "%.2f fds/session", f / n}')$([ "$after" -lt "$before" ] && echo "; RSS shrank during the test")"
  fi
  sleep 1   # let the closes go through before the next target
}

record_peak_rss() {
  local t
  for t in $BALANCERS; do
    in_list "$t" "$TARGETS" || continue
    [ "$t" = floor ] && { put peak_rss floor -; continue; }
    if [ -n "$(target_ready "$t")" ]; then put peak_rss "$t" NA "$(target_ready "$t")"; continue; fi
    put peak_rss "$t" "$(awk -v k="$(status_kib VmHWM $(lb_pids "$t"))" 'BEGIN{printf "%.1f", k / 1024}')" \
      "$([ "$t" = nginx ] && echo "sum of master and workers")"
  done
  in_list direct "$TARGETS" && put peak_rss direct -
}

# ---------------------------------------------------------------- install, build
need_pkgs=()
check_tool() { have "$1" || need_pkgs+=("$2"); }
check_tool haproxy haproxy
check_tool nginx nginx
check_tool iperf3 iperf3
check_tool sockperf sockperf
check_tool wrk wrk
check_tool redis-server redis-server
check_tool redis-benchmark redis-tools
check_tool dnsmasq dnsmasq-base
check_tool dnsperf dnsperf
check_tool python3 python3
check_tool taskset util-linux
check_tool ss iproute2
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || nginx -V 2>&1 | grep -q -- '--with-stream ' \
  || need_pkgs+=(libnginx-mod-stream)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$INSTALL" = 1 ] && have apt-get && [ "$(id -u)" = 0 ]; then
    log "installing: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get install -y --no-install-recommends "${need_pkgs[@]}" >"$TMP/apt.log" 2>&1 \
      || { timeout 300 apt-get update >>"$TMP/apt.log" 2>&1
           timeout 600 apt-get install -y --no-install-recommends "${need_pkgs[@]}" >>"$TMP/apt.log" 2>&1; } \
      || log "apt-get install failed (tests needing these show n/a): $(tail -1 "$TMP/apt.log")"
  else
    log "missing (tests needing them show n/a): ${need_pkgs[*]}"
  fi
fi

if [ -z "$BALLAST_BIN" ]; then
  BALLAST_BIN="$ROOT/target/release/ballast"
  if [ "$BUILD" = 1 ]; then
    log "cargo build --release -p ballast"
    if ! (cd "$ROOT" && timeout 1200 cargo build --release --locked -p ballast) >"$TMP/build.log" 2>&1; then
      log "build failed: $(grep -m1 -E '^error' "$TMP/build.log")"
      [ -x "$BALLAST_BIN" ] && log "using the existing $BALLAST_BIN" || DOWN[ballast]="build failed"
    fi
  fi
fi
[ -x "$BALLAST_BIN" ] || DOWN[ballast]="no Ballast binary at $BALLAST_BIN"
FLOOR_BIN="$ROOT/target/release/examples/floor_relay"
if [ "$FLOOR" = 1 ] && [ "$BUILD" = 1 ]; then
  log "cargo build --release -p ballast-dataplane --example floor_relay"
  (cd "$ROOT" && timeout 1200 cargo build --release --locked -p ballast-dataplane --example floor_relay) \
    >"$TMP/build-floor.log" 2>&1 || log "floor build failed: $(grep -m1 -E '^error' "$TMP/build-floor.log")"
fi
[ -n "$BASELINE_BIN" ] && [ ! -x "$BASELINE_BIN" ] && DOWN[baseline]="no baseline binary at $BASELINE_BIN"
[ "$FLOOR" = 1 ] && [ ! -x "$FLOOR_BIN" ] && DOWN[floor]="no floor relay at $FLOOR_BIN (cargo build --release --example floor_relay)"
# ballast2 and socket are the same binary: down for the same reason (a later failure to start is its own)
[ -n "${DOWN[ballast]:-}" ] && DOWN[ballast2]="${DOWN[ballast]}"
[ -n "${DOWN[ballast]:-}" ] && [ "$SOCKET" = 1 ] && DOWN[socket]="${DOWN[ballast]}"
# the source the binary was built from (others may commit while the benchmarks run)
if [ "$BALLAST_BIN" = "$ROOT/target/release/ballast" ]; then
  rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
  [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null)" ] \
    && rev="$rev + uncommitted changes"
  [ "$BUILD" = 1 ] || rev="$rev (not rebuilt: --no-build)"
else
  rev="$BALLAST_BIN"
fi
# One benchmark at a time on this machine: a second run (another checkout, another user of the
# same tree) waits for the first, since both would pin CPU 0 and share the cores.
if have flock; then
  exec 9>"/tmp/ballast-bench.lock"
  if ! flock -n 9; then
    log "another bench-peers.sh run is in progress; waiting up to 10 min for it"
    flock -w 600 9 || log "still running; going on anyway (figures will be disturbed)"
  fi
fi
T_BENCH=$(date +%s)
# the real interpreter, not a wrapper (pyenv shims fork): its PID is the one we stop
PYTHON="$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null)"

# ---------------------------------------------------------------- ports free?
for key in $TCP_KEYS $UDP_KEYS; do
  for t in direct $BALANCERS; do
    if port_busy "$(lb_port "$t" "$key")"; then
      echo "port $(lb_port "$t" "$key") is in use: pick another --port-base" >&2
      exit 2
    fi
  done
done
if [ "$SOCKET" = 1 ] && port_busy "$(lb_port socket ADMIN)"; then
  echo "port $(lb_port socket ADMIN) is in use: pick another --port-base" >&2
  exit 2
fi

# ---------------------------------------------------------------- the socket target's cgroup
# under the cgroup2 mount (a hybrid host mounts it at /sys/fs/cgroup/unified): its own directory,
# removed by cleanup; the hooks attach there, so only clients started in it are steered
if [ "$SOCKET" = 1 ] && [ -z "${DOWN[socket]:-}" ]; then
  CG2=$(awk '{split($0, h, " - "); split(h[2], r, " ")} r[1] == "cgroup2" {split(h[1], l, " "); print l[5]; exit}' /proc/self/mountinfo)
  if [ "$(id -u)" != 0 ]; then
    DOWN[socket]="the socket fast path needs root (BPF programs, a cgroup of its own)"
  elif [ -z "$CG2" ]; then
    DOWN[socket]="no cgroup2 mount"
  elif ! mkdir "$CG2/ballast-bench-$$" 2>"$TMP/cgroup.err"; then
    DOWN[socket]="cannot make a cgroup under $CG2: $(head -c 120 "$TMP/cgroup.err")"
  else
    SOCK_CG="$CG2/ballast-bench-$$"
    log "socket target: clients in cgroup $SOCK_CG"
  fi
  [ -n "${DOWN[socket]:-}" ] && log "socket target: ${DOWN[socket]}"
fi

# ---------------------------------------------------------------- backends
log "starting backends in $TMP (ports $PORT_BASE+)"
printf 'bench.test A\n' >"$TMP/dns-queries.txt"
# dns_mix: names of 64 different lengths (1..64-character first labels), in an order where
# neighbours differ; dnsmasq answers every name under bench.test.
for ((i = 0; i < 64; i++)); do
  printf '%s.bench.test A\n' "$(head -c $(((i * 37) % 64 + 1)) /dev/zero | tr '\0' 'q')"
done >"$TMP/dns-mix-queries.txt"
have iperf3 && start_bg iperf3 iperf3 -s -B 127.0.0.1 -p "$(be_port IPERF)"
# the ping-pong servers live on CPU 0 with the client and the balancer
have sockperf && start_bg sockperf-tcp taskset -c 0 sockperf server --tcp -i 127.0.0.1 -p "$(be_port SPTCP)"
have sockperf && start_bg sockperf-udp taskset -c 0 sockperf server -i 127.0.0.1 -p "$(be_port SPUDP)"
if have nginx; then
  mkdir -p "$TMP/nginx-http"
  render "$HERE/nginx-http.conf.in" "" "$TMP/nginx-http.conf"
  start_bg nginx-http nginx -p "$TMP/nginx-http" -c "$TMP/nginx-http.conf" -e "$TMP/nginx-http.err"
fi
have redis-server && start_bg redis redis-server --bind 127.0.0.1 --port "$(be_port REDIS)" \
  --save '' --appendonly no --protected-mode no --daemonize no --dir "$TMP" --logfile "$TMP/redis.log"
have dnsmasq && start_bg dnsmasq dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv \
  --no-hosts --no-poll --user=root --listen-address=127.0.0.1 --bind-interfaces \
  --port="$(be_port DNS)" --address=/bench.test/192.0.2.1 --pid-file="$TMP/dnsmasq.pid" \
  --dns-forward-max=1000
[ -n "$PYTHON" ] && start_bg idle-sink "$PYTHON" "$HERE/idle_sessions.py" sink --port "$(be_port IDLE)"

for pair in iperf3:tcp:IPERF sockperf-tcp:tcp:SPTCP sockperf-udp:udp:SPUDP nginx-http:tcp:HTTP \
            redis:tcp:REDIS dnsmasq:udp:DNS idle-sink:tcp:IDLE; do
  IFS=: read -r name proto key <<<"$pair"
  [ -n "${PIDOF[$name]:-}" ] || continue
  if ! wait_port "$proto" "$(be_port "$key")" 10 "$name"; then
    log "backend $name did not start: $(head -c 200 "$TMP/$name.err" | tr '\n' ' ')"
    stop_bg "$name"
  fi
done

# ---------------------------------------------------------------- balancers
LOAD_STREAM=""
if nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
  LOAD_STREAM="load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
fi

start_balancer() {
  local t="$1" why=""
  case "$t" in
    haproxy)
      have haproxy || { DOWN[haproxy]="haproxy not installed"; return; }
      render "$HERE/haproxy.cfg.in" haproxy "$TMP/haproxy.cfg"
      start_bg haproxy haproxy -db -f "$TMP/haproxy.cfg" ;;
    nginx)
      have nginx || { DOWN[nginx]="nginx not installed"; return; }
      [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || [ -z "$LOAD_STREAM" ] \
        || { DOWN[nginx]="nginx stream module (libnginx-mod-stream) not installed"; return; }
      mkdir -p "$TMP/nginx-lb"
      render "$HERE/nginx-stream.conf.in" nginx "$TMP/nginx-lb.conf"
      start_bg nginx nginx -p "$TMP/nginx-lb" -c "$TMP/nginx-lb.conf" -e "$TMP/nginx-lb.err" ;;
    ballast)
      [ -z "${DOWN[ballast]:-}" ] || return
      render "$HERE/ballast.yaml.in" ballast "$TMP/ballast.yaml"
      start_bg ballast "$BALLAST_BIN" --log warn run -c "$TMP/ballast.yaml" ;;
    ballast2)
      # --scaling: the same binary, its own config (workers 2, ports base+400+K) and logs
      [ -z "${DOWN[ballast2]:-}" ] || return
      render "$HERE/ballast.yaml.in" ballast2 "$TMP/ballast2.yaml" "$SCALING_WORKERS"
      start_bg ballast2 "$BALLAST_BIN" --log warn run -c "$TMP/ballast2.yaml" ;;
    socket)
      # --socket: the same binary, fastpath: socket on every listener (ports base+700+K),
      # mode required: it exits when the programs cannot load or attach
      [ -z "${DOWN[socket]:-}" ] || return
      render_socket "$TMP/socket.yaml"
      if ! "$BALLAST_BIN" check -c "$TMP/socket.yaml" >"$TMP/socket-check.out" 2>&1; then
        DOWN[socket]="ballast check refused the socket config: $(grep -m1 -iE 'error|refus' "$TMP/socket-check.out" | cut -c1-120)"
        log "${DOWN[socket]}"; return
      fi
      start_bg socket "$BALLAST_BIN" --log warn run -c "$TMP/socket.yaml" ;;
    baseline)
      # --baseline: another binary, the same config as ballast (--workers N) on ports base+600+K
      [ -z "${DOWN[baseline]:-}" ] || return
      render "$HERE/ballast.yaml.in" baseline "$TMP/baseline.yaml"
      start_bg baseline "$BASELINE_BIN" --log warn run -c "$TMP/baseline.yaml" ;;
    floor)
      # TCP only: one LISTEN=BACKEND pair per TCP backend
      [ -z "${DOWN[floor]:-}" ] || return
      local pairs=() k
      for k in $TCP_KEYS; do pairs+=("127.0.0.1:$(lb_port floor "$k")=127.0.0.1:$(be_port "$k")"); done
      start_bg floor "$FLOOR_BIN" "${pairs[@]}" ;;
  esac
  local key ports=() udp=()
  for key in $TCP_KEYS; do ports+=("$(lb_port "$t" "$key")"); done
  case "$t" in haproxy|floor) ;; *) for key in $UDP_KEYS; do udp+=("$(lb_port "$t" "$key")"); done ;; esac
  for p in "${ports[@]}"; do wait_port tcp "$p" 10 "$t" || { why="TCP port $p not listening"; break; }; done
  [ -z "$why" ] && for p in "${udp[@]}"; do wait_port udp "$p" 10 "$t" || { why="UDP port $p not bound"; break; }; done
  alive "$t" || why="it exited"
  if [ -n "$why" ] || ! alive "$t"; then
    local err
    local logs=("$TMP/$t.err" "$TMP/$t.out")
    [ "$t" = nginx ] && logs+=("$TMP/nginx-lb.err")
    err=$(cat "${logs[@]}" 2>/dev/null | grep -m2 -iE 'error|alert|emerg|fail' | tr '\n' ' ' | cut -c1-120)
    DOWN[$t]="$t did not start: $why${err:+ ($err)}"
    log "${DOWN[$t]}"
    stop_bg "$t"
  fi
  if [ "$t" = socket ] && [ -z "${DOWN[socket]:-}" ]; then
    # the admin server is up a moment after the listeners; the fast path must say it is on
    local on="" i
    for ((i = 0; i < 30; i++)); do
      on=$(sock_status "s['fastpath']['socket_lb']['enabled'], s['fastpath']['socket_lb'].get('reason') or ''")
      [ -n "$on" ] && break
      sleep 0.1
    done
    case "$on" in
      True*) log "socket target: fast path on ($(sock_status "s['fastpath']['socket_lb'].get('cgroup')"))" ;;
      "") DOWN[socket]="socket: no answer from its admin server on $(lb_port socket ADMIN)"; log "${DOWN[socket]}"; stop_bg socket ;;
      *) DOWN[socket]="socket: fast path off: ${on#False }"; log "${DOWN[socket]}"; stop_bg socket ;;
    esac
  fi
}
for t in $BALANCERS; do in_list "$t" "$TARGETS" && start_balancer "$t"; done

# ---------------------------------------------------------------- serve (by hand)
if [ "$SERVE" -gt 0 ] 2>/dev/null; then
  printf '\n%-8s' "port"
  for t in direct $BALANCERS; do printf '%-9s' "$t"; done
  echo
  for key in $TCP_KEYS $UDP_KEYS; do
    printf '%-8s' "$key"
    for t in direct $BALANCERS; do printf '%-9s' "$(lb_port "$t" "$key")"; done
    echo
  done
  for t in $BALANCERS; do
    in_list "$t" "$TARGETS" || continue
    printf '%s PIDs: %s %s\n' "$t" "$(lb_pids "$t" | tr '\n' ' ')" "${DOWN[$t]:-}"
  done
  [ "$SCALING" = 1 ] && echo "ballast runs $WORKERS worker(s), ballast2 $SCALING_WORKERS"
  [ -n "$SOCK_CG" ] && echo "socket: admin on $(lb_port socket ADMIN); steered clients run in $SOCK_CG:" \
    "sh -c 'echo \$\$ > $SOCK_CG/cgroup.procs && exec CLIENT ARGS'"
  echo "configs and logs: $TMP; up for $SERVE s (Ctrl-C or SIGTERM stops everything)"
  # in the background: a foreground sleep would hold off the INT/TERM trap until it ends
  sleep "$SERVE" &
  STARTED+=("$!:$(start_time $!)")
  wait $!
  exit 0
fi

# ---------------------------------------------------------------- run
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
# for_targets ROUND FN ARGS...: call FN TARGET ARGS... for every target, rotated by round
for_targets() {
  local round="$1" fn="$2" n=${#TARGET_LIST[@]} i t why; shift 2
  for ((i = 0; i < n; i++)); do
    t="${TARGET_LIST[$(((i + round) % n))]}"
    why=$(target_ready "$t")
    "$fn" "$t" "$why" "$@"
  done
}
# run_one TARGET WHY TEST: run a test, or record why it cannot run
run_one() {
  local t="$1" why="$2" test="$3"
  local ids
  case "$test" in
    bulk) ids="bulk_gbps bulk_cpu" ;; pp_tcp) ids="pp_tcp_p50 pp_tcp_p99" ;;
    conn) ids="conn_rate conn_cpu" ;; redis) ids="redis_get redis_cpu" ;;
    pp_udp) ids="pp_udp_p50 pp_udp_p99" ;; udp) ids="udp_rate udp_loss udp_cpu" ;;
    dns) ids="dns_qps dns_cpu" ;; dns_mix) ids="dns_mix_qps dns_mix_cpu" ;; idle) ids=idle_kib ;;
  esac
  if [ "$t" = haproxy ] && in_list "$test" "pp_udp,udp,dns,dns_mix"; then
    for id in $ids; do put "$id" haproxy NA "HAProxy 2.6 has no UDP proxying (free edition)"; done
    return
  fi
  if [ "$t" = floor ] && in_list "$test" "pp_udp,udp,dns,dns_mix"; then
    for id in $ids; do put "$id" floor NA "the floor relay is TCP only"; done
    return
  fi
  if [ "$t" = floor ] && [ "$test" = idle ]; then
    # it keeps a 16 KiB buffer per direction once used (Ballast pools them): no floor for memory
    put idle_kib floor -
    return
  fi
  if [ -n "$why" ]; then
    for id in $ids; do put "$id" "$t" NA "$why"; done
    return
  fi
  local before steer0=""
  before=$(wc -l <"$RAW")
  if [ "$t" = socket ]; then
    CLIENT=(sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' cg-client "$SOCK_CG")
    steer0=$(sock_counters "${SOCK_LISTENER[$test]}")
  else
    CLIENT=(env)
  fi
  case "$test" in
    bulk) test_bulk "$t" ;; pp_tcp) test_pingpong "$t" tcp ;; conn) test_conn "$t" ;;
    redis) test_redis "$t" ;; pp_udp) test_pingpong "$t" udp ;; udp) test_udp "$t" ;;
    dns) test_dns "$t" ;; dns_mix) test_dns "$t" dns_mix "$TMP/dns-mix-queries.txt" ;;
    idle) test_idle "$t" ;;
  esac
  # a row the test did not write (it stopped early) gets the reason of the one it did write
  local written reason
  written=$(tail -n +"$((before + 1))" "$RAW")
  reason=$(awk -F'\t' '$3 == "NA" {print $4; exit}' <<<"$written")
  for id in $ids; do
    awk -F'\t' -v id="$id" '$1 == id {found = 1} END {exit !found}' <<<"$written" \
      || put "$id" "$t" NA "${reason:-no result}"
  done
  CLIENT=(env)
  [ "$t" = socket ] && check_steering "$test" "$before" "$steer0"
}
# check_steering TEST RAW-LINES-BEFORE COUNTERS-BEFORE: what the hook steered and what the relay
# took during TEST; when the relay took any session, the figures the test wrote get a note
check_steering() {
  local test="$1" before="$2" c0="$3" c1 s r
  c1=$(sock_counters "${SOCK_LISTENER[$test]}")
  if [ -z "$c0" ] || [ -z "$c1" ]; then
    log "  socket $test: no counters from the admin server"
    SOCK_STEERED[$test]="?"; return
  fi
  s=$(( ${c1% *} - ${c0% *} )); r=$(( ${c1#* } - ${c0#* } ))
  SOCK_STEERED[$test]=$(( ${SOCK_STEERED[$test]:-0} + s ))
  SOCK_RELAYED[$test]=$(( ${SOCK_RELAYED[$test]:-0} + r ))
  log "  socket $test: steered $s, through the relay $r (listener ${SOCK_LISTENER[$test]})"
  [ "$r" -gt 0 ] || [ "$s" -eq 0 ] || return 0
  local note="not (all) steered: the relay took $r session(s), the hook steered $s"
  awk -F'\t' -v OFS='\t' -v from="$before" -v note="$note" \
    'NR > from && $2 == "socket" && $3 != "NA" && $3 != "-" {$4 = ($4 == "" ? note : $4 "; " note)} {print}' \
    "$RAW" >"$RAW.tmp" && mv "$RAW.tmp" "$RAW"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "benchmarks: $MODE mode, $ROUNDS round(s) x ${DURATION}s, workers $WORKERS$([ "$SCALING" = 1 ] && echo " (ballast2: $SCALING_WORKERS)"), targets $TARGETS"
for ((round = 0; round < ROUNDS; round++)); do
  for test in bulk pp_tcp conn redis pp_udp udp dns dns_mix; do
    in_list "$test" "$TESTS" || continue
    log "round $((round + 1)): $test"
    for_targets "$round" run_one "$test"
  done
done
record_peak_rss
if in_list idle "$TESTS"; then
  log "idle sessions ($IDLE_N per balancer)"
  for_targets 0 run_one idle
fi

# ---------------------------------------------------------------- report
T_END=$(date +%s)
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine=$NCPU CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/  */ /g')), Linux $(uname -r), shared"
  echo "command=scripts/bench-peers.sh${ORIG_ARGS:+ $ORIG_ARGS}"
  echo "mode=$MODE"
  echo "rounds=$ROUNDS"
  echo "duration=$DURATION"
  echo "workers=$WORKERS"
  [ "$SCALING" = 1 ] && echo "ballast2_workers=$SCALING_WORKERS"
  echo "targets=$TARGETS"
  echo "tests=$TESTS"
  echo "ballast_rev=${rev:-?}"
  [ -n "$BASELINE_BIN" ] && echo "baseline_rev=$BASELINE_BIN"
  if in_list socket "$TARGETS"; then
    # test:steered/relayed, summed over rounds, for the steering line under the table
    steer=""
    for test in bulk pp_tcp conn redis pp_udp udp dns dns_mix idle; do
      [ -n "${SOCK_STEERED[$test]:-}" ] && steer="$steer${steer:+,}$test:${SOCK_STEERED[$test]}/${SOCK_RELAYED[$test]:-?}"
    done
    echo "socket_steering=$steer"
    echo "socket_cgroup=${SOCK_CG:-none}"
  fi
  echo "peers=$(haproxy -v 2>/dev/null | head -1 | awk '{print "HAProxy " $3}' | grep . || echo "no HAProxy"), $(nginx -v 2>&1 | grep -o 'nginx/.*' | sed 's|/| |' | grep . || echo "no nginx")"
  echo "loadavg=$LOAD_START"
  echo "wall=$((T_END - T_BENCH)) (+$((T_BENCH - T0)) s install/build)"
  echo "udp_rate_h=$(awk -v r="$UDP_RATE" 'BEGIN{printf (r >= 1000 ? "%gk/s" : "%g/s"), (r >= 1000 ? r / 1000 : r)}')"
  echo "idle_n=$IDLE_N"
} >"$META"
python3 "$HERE/report.py" "$RAW" "$META" >"$TMP/report.md" || { log "report failed"; cat "$RAW"; exit 1; }
cp "$TMP/report.md" "$OUT"; cp "$RAW" "$RAW_OUT"; cp "$META" "$META_OUT"
cp "$OUT" "$OUTDIR/bench-$(date +%Y%m%d-%H%M%S)-w$WORKERS$([ "$SCALING" = 1 ] && echo "-scaling")$([ -n "$BASELINE_BIN" ] && echo "-baseline")$([ "$SOCKET" = 1 ] && echo "-socket").md"
echo
cat "$OUT"
echo
log "table written to $OUT (raw figures: $RAW_OUT)"
