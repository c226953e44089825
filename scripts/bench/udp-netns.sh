#!/usr/bin/env bash
# UDP across hosts: the topology of the UDP offload (fastpath: udp_offload), in network
# namespaces made here and deleted on exit. Called by `scripts/bench-peers.sh --topology netns`.
#
#   client ns (10.79.1.2) --veth-- lb ns (10.79.1.1 | 10.79.2.1) --veth-- backend ns (10.79.2.2)
#
# Targets, in one interleaved run (each round runs every test on every target in turn):
#   direct   the client talks to the backend itself, routed through the lb namespace
#            (forwarding on there): the physical limit of this path
#   nginx    nginx's stream module, UDP proxy
#   relay    Ballast, fastpath: none
#   offload  Ballast, fastpath: udp_offload (the kernel forwards after each flow's first exchange)
# Tests: UDP ping-pong (sockperf, 64-byte messages; p50 and p99 round trip) and DNS (dnsperf
# against dnsmasq; queries per second). The balancer's own CPU time per test is read from
# /proc. Needs root, iproute2, sockperf, dnsperf, dnsmasq, nginx with the stream module, and
# a release build of Ballast (built here if missing).
#
#   scripts/bench/udp-netns.sh [--rounds N] [--duration S]
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=3
DURATION=5
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --topology) shift ;;  # passed through by bench-peers.sh
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces, BPF)" >&2; exit 1; }
for tool in ip sockperf dnsperf dnsmasq nginx; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[ -x target/release/ballast ] || cargo build --release --locked -p ballast >&2

TMP="$(mktemp -d)"
NS="bludp$$"
CL="${NS}cl" LB="${NS}lb" BE="${NS}be"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "$CL" "$LB" "$BE"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

for ns in "$CL" "$LB" "$BE"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$CL" link add c0 type veth peer name c1 netns "$LB"
ip -n "$LB" link add b0 type veth peer name b1 netns "$BE"
ip -n "$CL" addr add 10.79.1.2/24 dev c0; ip -n "$CL" link set c0 up
ip -n "$LB" addr add 10.79.1.1/24 dev c1; ip -n "$LB" link set c1 up
ip -n "$LB" addr add 10.79.2.1/24 dev b0; ip -n "$LB" link set b0 up
ip -n "$BE" addr add 10.79.2.2/24 dev b1; ip -n "$BE" link set b1 up
ip -n "$CL" route add default via 10.79.1.1
ip -n "$BE" route add default via 10.79.2.1
# For the direct target only: the lb namespace routes between the two sides.
ip netns exec "$LB" sysctl -qw net.ipv4.ip_forward=1

bg() { "$@" >/dev/null 2>&1 & PIDS+=("$!"); }

# Backends.
bg ip netns exec "$BE" sockperf server -i 10.79.2.2 -p 11111
bg ip netns exec "$BE" dnsmasq --keep-in-foreground --conf-file=/dev/null --pid-file= \
  --no-resolv --no-hosts --bind-interfaces --listen-address=10.79.2.2 --port=5353 \
  --address=/example.test/10.1.2.3 --cache-size=0
printf 'example.test A\nwww.example.test A\n' >"$TMP/queries"

# nginx: the stream module's UDP proxy.
load=""
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] && load="load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
cat >"$TMP/nginx.conf" <<EOF
$load
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx.err warn;
events { worker_connections 4096; }
stream {
  server { listen 10.79.1.1:21111 udp reuseport; proxy_pass 10.79.2.2:11111; proxy_timeout 30s; }
  server { listen 10.79.1.1:25353 udp reuseport; proxy_pass 10.79.2.2:5353; proxy_timeout 5s; proxy_responses 1; }
}
EOF
bg ip netns exec "$LB" nginx -c "$TMP/nginx.conf" -e "$TMP/nginx.err"

# Ballast, relay and offload, one worker each (as nginx).
ballast_config() {  # PORT_BASE FASTPATH
  cat <<EOF
workers: 1
admin: { listen: 127.0.0.1:$(($1 + 9000)) }
listeners:
  - { name: pp, protocol: udp, listen: "10.79.1.1:$(($1 + 1111))", pool: pp, fastpath: $2 }
  - { name: dns, protocol: udp, listen: "10.79.1.1:$(($1 + 5353))", pool: dns, fastpath: $2 }
pools:
  - { name: pp, backends: [{ address: "10.79.2.2:11111" }] }
  - { name: dns, backends: [{ address: "10.79.2.2:5353" }] }
EOF
}
ballast_config 30000 none >"$TMP/relay.yaml"
{ ballast_config 40000 udp_offload; printf 'fastpath:\n  udp_offload: { interfaces: [c1, b0], mode: required }\n'; } >"$TMP/offload.yaml"
ip netns exec "$LB" target/release/ballast --log warn run -c "$TMP/relay.yaml" 2>"$TMP/relay.err" &
PIDS+=("$!"); RELAY_PID=$!
ip netns exec "$LB" target/release/ballast --log warn run -c "$TMP/offload.yaml" 2>"$TMP/offload.err" &
PIDS+=("$!"); OFFLOAD_PID=$!

addr_of() {  # TARGET TEST -> ip port
  case "$1:$2" in
    direct:pp) echo "10.79.2.2 11111" ;;   direct:dns) echo "10.79.2.2 5353" ;;
    nginx:pp) echo "10.79.1.1 21111" ;;    nginx:dns) echo "10.79.1.1 25353" ;;
    relay:pp) echo "10.79.1.1 31111" ;;    relay:dns) echo "10.79.1.1 35353" ;;
    offload:pp) echo "10.79.1.1 41111" ;;  offload:dns) echo "10.79.1.1 45353" ;;
  esac
}
pid_of() {
  case "$1" in
    relay) echo "$RELAY_PID" ;; offload) echo "$OFFLOAD_PID" ;;
    nginx) cat "$TMP/nginx.pid" 2>/dev/null || echo 0 ;; *) echo 0 ;;
  esac
}
# CPU ticks of a process and its threads (and, for nginx, its workers: the master's children).
ticks() {
  local pid="$1" total=0 p
  [ "$pid" = 0 ] && { echo 0; return; }
  for p in "$pid" $(pgrep -P "$pid" 2>/dev/null); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# Ready: each target answers a DNS query (bounded).
for target in direct nginx relay offload; do
  read -r ip port < <(addr_of "$target" dns)
  ok=0
  for _ in $(seq 1 100); do
    if ip netns exec "$CL" dig +short +time=1 +tries=1 -p "$port" "@$ip" example.test 2>/dev/null | grep -q 10.1.2.3; then ok=1; break; fi
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "$target does not answer; logs in $TMP" >&2; cat "$TMP"/*.err >&2; exit 1; }
done

declare -A P50 P99 QPS CPU
for round in $(seq 1 "$ROUNDS"); do
  for target in direct nginx relay offload; do
    pid="$(pid_of "$target")"
    read -r ip port < <(addr_of "$target" pp)
    before="$(ticks "$pid")"
    out="$(ip netns exec "$CL" sockperf ping-pong -i "$ip" -p "$port" -t "$DURATION" --msg-size 64 2>&1 || true)"
    after="$(ticks "$pid")"
    p50="$(sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p' <<<"$out" | head -1)"
    p99="$(sed -n 's/.*percentile 99.000 = *\([0-9.]*\).*/\1/p' <<<"$out" | head -1)"
    P50[$target]+="${p50:-nan} "; P99[$target]+="${p99:-nan} "
    CPU[$target]+="$(( after - before )) "
    read -r ip port < <(addr_of "$target" dns)
    out="$(ip netns exec "$CL" dnsperf -s "$ip" -p "$port" -d "$TMP/queries" -l "$DURATION" -c 8 -q 64 2>&1 || true)"
    qps="$(sed -n 's/.*Queries per second: *\([0-9.]*\).*/\1/p' <<<"$out" | head -1)"
    QPS[$target]+="${qps:-nan} "
    echo "round $round $target: pp p50 ${p50:-?} us p99 ${p99:-?} us, dns ${qps:-?} q/s" >&2
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
d50="$(median "${P50[direct]}")"; d99="$(median "${P99[direct]}")"; dq="$(median "${QPS[direct]}")"
echo
echo "UDP across namespaces, $ROUNDS round(s) x ${DURATION}s, medians; ratios against direct"
printf '| %-8s | %12s | %12s | %12s | %12s | %12s | %12s | %10s |\n' target "pp p50 (us)" "p50 ratio" "pp p99 (us)" "p99 ratio" "DNS q/s" "q/s ratio" "CPU ticks"
printf '|%s|\n' "----------|--------------|--------------|--------------|--------------|--------------|--------------|------------"
for target in direct nginx relay offload; do
  m50="$(median "${P50[$target]}")"; m99="$(median "${P99[$target]}")"; mq="$(median "${QPS[$target]}")"
  printf '| %-8s | %12s | %12s | %12s | %12s | %12s | %12s | %10s |\n' "$target" "$m50" "$(ratio "$m50" "$d50")" \
    "$m99" "$(ratio "$m99" "$d99")" "$mq" "$(ratio "$mq" "$dq")" "$(median "${CPU[$target]}")"
done
echo "(CPU ticks: the balancer's own user+system time per ping-pong test, 1 tick = 10 ms; direct has none)"
