#!/usr/bin/env bash
# Client-visible errors during binary upgrades under load: Ballast's in-place upgrade, HAProxy's
# master-worker reload, and a naive Ballast restart beside the old process, in one interleaved
# run. A tool, never a test: it counts what wrk saw and asserts nothing. Called by
# `scripts/bench-peers.sh --upgrade` (or run directly).
#
#   scripts/bench/upgrade.sh [--rounds N] [--upgrades K] [--interval S] [--duration S]
#
# Load: wrk -t2 -c50 -H 'Connection: close' (a new connection per request: what shows a
# connection dropped during a hand-over) through each target to an nginx returning an empty 200
# (scripts/bench/nginx-http.conf.in). Under that load each target is upgraded K times (default
# 8), ~1 s apart (--interval), each upgrade waiting for the old process to exit before the next:
#   ballast  `ballast run -c CONFIG` with an admin block and a token file
#            (scripts/bench/upgrade-ballast.yaml.in), upgraded with `ballast upgrade -c CONFIG`,
#            which answers once the new process serves (the listening sockets handed over)
#   haproxy  `haproxy -W -S MASTER_SOCKET -f CONFIG` (master-worker,
#            scripts/bench/upgrade-haproxy.cfg.in, `expose-fd listeners` on the stats socket),
#            reloaded with `kill -USR2 MASTER_PID`; done when a new worker runs and the old exited
#   restart  the naive way (what issue 16 measured first): a second `ballast run` beside the
#            first, both with `shared_port: true` (SO_REUSEPORT, each its own admin port), and
#            once it is ready, SIGTERM to the old one
#   steady   (not by default) Ballast under the same load with no upgrade: the machine's noise
# Interleaved: every round runs each target once (started fresh, stopped after), and each round
# starts with the next target. An upgrade is only started while wrk has more than 2 s to run,
# so every one is under load; the table gives how many were done. Errors are wrk's socket
# errors (connect, read, write, timeout; --timeout 5s) and its non-2xx responses.
# Output: a Markdown table, printed and written to target/bench/upgrade.md (--out FILE).
# Needs wrk, nginx, haproxy (for its target), curl and a release build of Ballast (built with
# cargo if missing; --ballast PATH to use another binary). Loopback ports --port-base N
# (default 23000): N+1 (backend), N+10..N+11 (ballast), N+20 (haproxy), N+30..N+32 (restart),
# N+40..N+41 (steady). Every process started here is stopped by PID on exit.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/scripts/bench"

ROUNDS=3
UPGRADES=8
INTERVAL=1
DURATION=""
PORT_BASE=23000
TARGETS="ballast,haproxy,restart"
BALLAST_BIN=""
BUILD=1
OUT=""
KEEP_TMP=0
WRK_CONNS=50
WRK_THREADS=2
WRK_TIMEOUT=5
ORIG_ARGS="$*"
CMD=scripts/bench/upgrade.sh
in_args() { local a w="$1"; shift; for a in "$@"; do [ "$a" = "$w" ] && return 0; done; return 1; }
in_args --upgrade "$@" && CMD=scripts/bench-peers.sh   # as the operator typed it

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<EOF
Options:
  --rounds N        rounds (default $ROUNDS); each runs every target once
  --upgrades K      upgrades per target and round (default $UPGRADES)
  --interval S      seconds between the end of one upgrade and the start of the next
                    (default $INTERVAL)
  --duration S      seconds of wrk load per target and round (default: 2 + 1.5 x K x interval
                    + 2, rounded up; upgrades that do not fit are not done)
  --targets LIST    subset of ballast,haproxy,restart,steady (default $TARGETS)
  --wrk-conns N     wrk connections (default $WRK_CONNS; threads: $WRK_THREADS)
  --port-base N     first loopback port (default $PORT_BASE; uses N+1..N+41)
  --ballast PATH    the Ballast binary (default: target/release/ballast, built if missing)
  --no-build        never run cargo build
  --out FILE        Markdown output (default target/bench/upgrade.md)
  --keep-tmp        keep the temp dir (configs, logs, wrk outputs)
  --upgrade, --no-install
                    accepted and ignored (passed through by scripts/bench-peers.sh)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --upgrade|--no-install) ;;
    --rounds) ROUNDS="$2"; shift ;;
    --upgrades) UPGRADES="$2"; shift ;;
    --interval) INTERVAL="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --targets) TARGETS="$2"; shift ;;
    --wrk-conns) WRK_CONNS="$2"; shift ;;
    --port-base) PORT_BASE="$2"; shift ;;
    --ballast) BALLAST_BIN="$2"; BUILD=0; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT="$2"; shift ;;
    --keep-tmp) KEEP_TMP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for n in "$ROUNDS" "$UPGRADES" "$PORT_BASE" "$WRK_CONNS"; do
  case "$n" in ''|*[!0-9]*) echo "--rounds, --upgrades, --port-base and --wrk-conns take a number" >&2; exit 2 ;; esac
done
case "$INTERVAL" in ''|*[!0-9.]*) echo "--interval takes seconds" >&2; exit 2 ;; esac
[ -n "$DURATION" ] || DURATION=$(awk -v k="$UPGRADES" -v i="$INTERVAL" 'BEGIN { d = 4 + 1.5 * k * i; printf "%d", (d == int(d)) ? d : int(d) + 1 }')
case "$DURATION" in ''|*[!0-9]*) echo "--duration takes whole seconds" >&2; exit 2 ;; esac
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
for t in "${TARGET_LIST[@]}"; do
  case "$t" in ballast|haproxy|restart|steady) ;; *) echo "unknown target: $t (ballast,haproxy,restart,steady)" >&2; exit 2 ;; esac
done
: "${BALLAST_BIN:=$ROOT/target/release/ballast}"
: "${OUT:=$ROOT/target/bench/upgrade.md}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
in_list() { case ",$2," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ---------------------------------------------------------------- tools
missing=()
for tool in wrk nginx curl; do have "$tool" || missing+=("$tool"); done
in_list haproxy "$TARGETS" && ! have haproxy && missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]} (Debian: apt-get install ${missing[*]}; or leave haproxy out with --targets)" >&2
  exit 1
fi
if [ ! -x "$BALLAST_BIN" ]; then
  if [ "$BUILD" = 1 ] && [ "$BALLAST_BIN" = "$ROOT/target/release/ballast" ]; then
    log "building Ballast (cargo build --release --locked -p ballast)"
    (cd "$ROOT" && timeout 1200 cargo build --release --locked -p ballast) >&2 || { echo "cargo build failed" >&2; exit 1; }
  else
    echo "no Ballast binary at $BALLAST_BIN (build it, or give --ballast PATH)" >&2
    exit 1
  fi
fi

# ---------------------------------------------------------------- processes we start, by PID
TMP="$(mktemp -d /tmp/ballast-upgrade.XXXXXX)"
declare -a STARTED=()          # "pid:starttime" of every process started here (or by an upgrade)

# A PID plus its start time (field 22 of /proc/PID/stat) names one process: a PID that died and
# was reused by someone else is left alone.
start_time() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }
ours() { local e="$1"; [ -n "$(start_time "${e%%:*}")" ] && [ "$(start_time "${e%%:*}")" = "${e#*:}" ]; }
remember() { local st; st=$(start_time "$1"); [ -n "$st" ] && STARTED+=("$1:$st"); }
# gone PID: exited (or a zombie: exited, not reaped yet by its parent)
gone() { local s; s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1); [ -z "$s" ] || [ "$s" = Z ]; }
# wait_gone PID SECONDS: until PID exited; false if it still runs after SECONDS
wait_gone() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do gone "$1" && return 0; sleep 0.1; done
  gone "$1"
}

cleanup() {
  local e i alive
  trap - EXIT INT TERM
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    e="${STARTED[$i]}"
    ours "$e" && kill -TERM "${e%%:*}" 2>/dev/null
  done
  for _ in $(seq 20); do
    alive=0
    for e in "${STARTED[@]}"; do ours "$e" && ! gone "${e%%:*}" && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.25
  done
  for e in "${STARTED[@]}"; do ours "$e" && kill -KILL "${e%%:*}" 2>/dev/null; done
  wait 2>/dev/null
  if [ "$KEEP_TMP" = 1 ]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# start_bg NAME CMD...: CMD in the background, output in $TMP/NAME.log; its PID in BG_PID.
# fd 9 (the bench lock) is not inherited: a process left behind would hold it.
start_bg() {
  local name="$1"; shift
  "$@" >>"$TMP/$name.log" 2>&1 </dev/null 9>&- &
  BG_PID=$!
  remember "$BG_PID"
}

# stop_pid PID: SIGTERM, up to 10 s, then SIGKILL
stop_pid() {
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null
  wait_gone "$1" 10 || kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
  return 0
}

# render TEMPLATE OUT KEY=VALUE...: fill @KEY@ placeholders
render() {
  local tpl="$1" out="$2" kv args=()
  shift 2
  for kv in "$@" "TMP=$TMP"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${args[@]}" "$tpl" >"$out"
  if grep -v '^ *#' "$out" | grep -q '@[A-Z_]*@'; then log "unfilled placeholder in $out: $(grep -v '^ *#' "$out" | grep -o '@[A-Z_]*@' | head -1)"; exit 1; fi
}

# ---------------------------------------------------------------- ports and configs
BE_HTTP=$((PORT_BASE + 1))
declare -A LB_PORT=([ballast]=$((PORT_BASE + 10)) [haproxy]=$((PORT_BASE + 20)) [restart]=$((PORT_BASE + 30)) [steady]=$((PORT_BASE + 40)))
BALLAST_ADMIN=$((PORT_BASE + 11))
RESTART_ADMIN=($((PORT_BASE + 31)) $((PORT_BASE + 32)))
STEADY_ADMIN=$((PORT_BASE + 41))

for port in "$BE_HTTP" "${LB_PORT[@]}" "$BALLAST_ADMIN" "${RESTART_ADMIN[@]}" "$STEADY_ADMIN"; do
  if [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]; then
    echo "port $port is in use (pick other ports with --port-base N)" >&2
    exit 1
  fi
done

echo "bench-upgrade-token-$$-$RANDOM" >"$TMP/admin-token"
chmod 600 "$TMP/admin-token"
render "$HERE/upgrade-ballast.yaml.in" "$TMP/ballast.yaml" "LB=${LB_PORT[ballast]}" "ADMIN=$BALLAST_ADMIN" \
  "TOKEN=, token_file: \"$TMP/admin-token\"" SHARED=false "BE_HTTP=$BE_HTTP"
render "$HERE/upgrade-ballast.yaml.in" "$TMP/restart-0.yaml" "LB=${LB_PORT[restart]}" "ADMIN=${RESTART_ADMIN[0]}" \
  TOKEN= SHARED=true "BE_HTTP=$BE_HTTP"
render "$HERE/upgrade-ballast.yaml.in" "$TMP/restart-1.yaml" "LB=${LB_PORT[restart]}" "ADMIN=${RESTART_ADMIN[1]}" \
  TOKEN= SHARED=true "BE_HTTP=$BE_HTTP"
render "$HERE/upgrade-ballast.yaml.in" "$TMP/steady.yaml" "LB=${LB_PORT[steady]}" "ADMIN=$STEADY_ADMIN" \
  TOKEN= SHARED=false "BE_HTTP=$BE_HTTP"
render "$HERE/upgrade-haproxy.cfg.in" "$TMP/haproxy.cfg" "LB=${LB_PORT[haproxy]}" "BE_HTTP=$BE_HTTP"
for cfg in ballast restart-0 restart-1 steady; do
  "$BALLAST_BIN" check -c "$TMP/$cfg.yaml" >"$TMP/check-$cfg.log" 2>&1 || { cat "$TMP/check-$cfg.log" >&2; exit 1; }
done
if in_list haproxy "$TARGETS"; then
  haproxy -c -q -f "$TMP/haproxy.cfg" >"$TMP/check-haproxy.log" 2>&1 || { cat "$TMP/check-haproxy.log" >&2; exit 1; }
fi

# One benchmark at a time on this machine (the lock scripts/bench-peers.sh takes too).
if have flock; then
  exec 9>"/tmp/ballast-bench.lock"
  if ! flock -n 9; then
    log "another benchmark holds /tmp/ballast-bench.lock; waiting up to 10 min for it"
    flock -w 600 9 || log "still running; going on anyway (figures will be disturbed)"
  fi
fi
T_START=$(date +%s)
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- the backend
mkdir -p "$TMP/nginx-http"
render "$HERE/nginx-http.conf.in" "$TMP/nginx-http.conf" "BE_HTTP=$BE_HTTP"
start_bg nginx-http nginx -p "$TMP/nginx-http" -c "$TMP/nginx-http.conf" -e "$TMP/nginx-http.err"
NGINX_PID=$BG_PID

# http_ok PORT: one request answered 200
http_ok() { [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null)" = 200 ]; }
# wait_http PORT SECONDS
wait_http() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do http_ok "$1" && return 0; sleep 0.1; done
  return 1
}
wait_http "$BE_HTTP" 10 || { log "the nginx backend does not answer on $BE_HTTP"; cat "$TMP/nginx-http.err" "$TMP/nginx-http.log" >&2; exit 1; }

# ---------------------------------------------------------------- Ballast status
# status ADMIN_PORT: "PID READY" from GET /api/v1/status ("- false" when it does not answer)
status() {
  local body pid ready
  body=$(curl -s -m 2 "http://127.0.0.1:$1/api/v1/status" 2>/dev/null)
  pid=$(grep -o '"pid": *[0-9]*' <<<"$body" | head -1 | grep -o '[0-9]*$')
  ready=$(grep -o '"ready": *[a-z]*' <<<"$body" | head -1 | sed 's/.*: *//')
  echo "${pid:--} ${ready:-false}"
}
# wait_ready ADMIN_PORT SECONDS [PID]: until the status says ready (and, given PID, from PID)
wait_ready() {
  local i pid ready
  for ((i = 0; i < $2 * 10; i++)); do
    read -r pid ready < <(status "$1")
    [ "$ready" = true ] && { [ -z "${3:-}" ] || [ "$pid" = "$3" ]; } && return 0
    [ -n "${3:-}" ] && gone "$3" && return 1
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- targets
# Each target has start_T (serving when it returns 0), upgrade_T (one upgrade; 0 when done,
# the old process gone) and stop_T. CUR_PID is the serving process (HAProxy: the master).
CUR_PID=""
RESTART_SIDE=0
FAIL_WHY=""

start_ballast() {
  start_bg "ballast" "$BALLAST_BIN" run -c "$TMP/ballast.yaml"
  CUR_PID=$BG_PID
  wait_ready "$BALLAST_ADMIN" 20 "$CUR_PID"
}
upgrade_ballast() {
  local old="$CUR_PID" out new
  if ! out=$(timeout -k 2 40 "$BALLAST_BIN" upgrade -c "$TMP/ballast.yaml" 2>&1 9>&-); then
    FAIL_WHY="ballast upgrade: $(tail -1 <<<"$out")"
    return 1
  fi
  new=$(grep -o '"pid": *[0-9]*' <<<"$out" | head -1 | grep -o '[0-9]*$')
  [ -n "$new" ] || { FAIL_WHY="no pid in the answer: $out"; return 1; }
  remember "$new"
  CUR_PID=$new
  wait_gone "$old" 20 || { FAIL_WHY="the old process $old still runs 20 s after the upgrade"; return 1; }
  wait "$old" 2>/dev/null
  return 0
}
stop_ballast() { stop_pid "$CUR_PID"; }

start_steady() {
  start_bg "steady" "$BALLAST_BIN" run -c "$TMP/steady.yaml"
  CUR_PID=$BG_PID
  wait_ready "$STEADY_ADMIN" 20 "$CUR_PID"
}
stop_steady() { stop_pid "$CUR_PID"; }

start_restart() {
  RESTART_SIDE=0
  start_bg "restart" "$BALLAST_BIN" run -c "$TMP/restart-0.yaml"
  CUR_PID=$BG_PID
  wait_ready "${RESTART_ADMIN[0]}" 20 "$CUR_PID"
}
upgrade_restart() {
  local old="$CUR_PID" side=$((1 - RESTART_SIDE)) new
  start_bg "restart" "$BALLAST_BIN" run -c "$TMP/restart-$side.yaml"
  new=$BG_PID
  if ! wait_ready "${RESTART_ADMIN[$side]}" 20 "$new"; then
    FAIL_WHY="the second process was not ready within 20 s (see restart.log)"
    stop_pid "$new"
    return 1
  fi
  kill -TERM "$old" 2>/dev/null
  CUR_PID=$new
  RESTART_SIDE=$side
  wait_gone "$old" 20 || { FAIL_WHY="the old process $old still runs 20 s after SIGTERM"; return 1; }
  wait "$old" 2>/dev/null
  return 0
}
stop_restart() { stop_pid "$CUR_PID"; }

workers() { pgrep -P "$1" 2>/dev/null | sort -n | tr '\n' ' '; }
start_haproxy() {
  rm -f "$TMP/haproxy-master.sock"
  start_bg "haproxy" haproxy -W -S "$TMP/haproxy-master.sock" -f "$TMP/haproxy.cfg"
  CUR_PID=$BG_PID
  local i
  for ((i = 0; i < 100; i++)); do
    [ -n "$(workers "$CUR_PID")" ] && http_ok "${LB_PORT[haproxy]}" && return 0
    gone "$CUR_PID" && return 1
    sleep 0.1
  done
  return 1
}
upgrade_haproxy() {
  local master="$CUR_PID" old new w i
  old=$(workers "$master")
  kill -USR2 "$master" 2>/dev/null || { FAIL_WHY="the master $master is gone"; return 1; }
  new=""
  for ((i = 0; i < 100; i++)); do
    sleep 0.1
    for w in $(workers "$master"); do in_list "$w" "${old// /,}" || gone "$w" || new=$w; done
    [ -n "$new" ] && break
  done
  [ -n "$new" ] || { FAIL_WHY="no new worker 10 s after SIGUSR2"; return 1; }
  remember "$new"
  for w in $old; do
    wait_gone "$w" 20 || { FAIL_WHY="the old worker $w still runs 20 s after the reload"; return 1; }
  done
  return 0
}
stop_haproxy() {
  local w ws
  ws=$(workers "$CUR_PID")
  stop_pid "$CUR_PID"
  for w in $ws; do gone "$w" || kill -KILL "$w" 2>/dev/null; done
}

# ---------------------------------------------------------------- the run
declare -A REQ CONN READ WRITE TMO NON2XX UPG FAIL RDONE
for t in "${TARGET_LIST[@]}"; do
  REQ[$t]=0 CONN[$t]=0 READ[$t]=0 WRITE[$t]=0 TMO[$t]=0 NON2XX[$t]=0 UPG[$t]=0 FAIL[$t]=0 RDONE[$t]=0
done
DETAIL=()
NOTES=()
now_ms() { date +%s%3N; }

run_one() {  # TARGET ROUND
  local t="$1" r="$2" port="${LB_PORT[$1]}" wrk_pid t0 k done=0 failed=0 out req se c rd w to n2 deadline
  log "round $r: $t"
  if ! "start_$t"; then
    NOTES+=("round $r, $t: did not start (logs in the temp dir; --keep-tmp)")
    log "$t did not start"; tail -5 "$TMP/$t.log" >&2
    "stop_$t"
    return
  fi
  timeout -k 2 $((DURATION + 15)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" --timeout "${WRK_TIMEOUT}s" \
    -H 'Connection: close' "http://127.0.0.1:$port/" >"$TMP/wrk-$t-$r.out" 2>&1 </dev/null 9>&- &
  wrk_pid=$!
  t0=$(now_ms)
  deadline=$((t0 + DURATION * 1000 - 2000))   # no upgrade starts in wrk's last 2 s
  sleep 1
  if [ "$t" != steady ]; then
    for ((k = 1; k <= UPGRADES; k++)); do
      [ "$(now_ms)" -lt "$deadline" ] && ! gone "$wrk_pid" || break
      FAIL_WHY=""
      if "upgrade_$t"; then
        done=$((done + 1))
      else
        failed=$((failed + 1))
        NOTES+=("round $r, $t, upgrade $k: $FAIL_WHY")
        log "$t upgrade $k failed: $FAIL_WHY"
      fi
      [ $k -lt "$UPGRADES" ] && sleep "$INTERVAL"
    done
    [ $((done + failed)) -lt "$UPGRADES" ] && NOTES+=("round $r, $t: $((done + failed)) of $UPGRADES upgrades fitted in ${DURATION} s of load")
  fi
  wait "$wrk_pid" 2>/dev/null
  "stop_$t"
  out=$(cat "$TMP/wrk-$t-$r.out")
  req=$(awk '/requests in/ {print $1; exit}' <<<"$out")
  if [ -z "$req" ]; then
    NOTES+=("round $r, $t: wrk gave no figures: $(tail -1 <<<"$out")")
    log "wrk gave no figures: $out"
    return
  fi
  se=$(grep -m1 'Socket errors' <<<"$out")
  c=$(sed -n 's/.*connect \([0-9]*\).*/\1/p' <<<"$se"); rd=$(sed -n 's/.*read \([0-9]*\).*/\1/p' <<<"$se")
  w=$(sed -n 's/.*write \([0-9]*\).*/\1/p' <<<"$se"); to=$(sed -n 's/.*timeout \([0-9]*\).*/\1/p' <<<"$se")
  n2=$(awk '/Non-2xx/ {print $NF; exit}' <<<"$out")
  c=${c:-0} rd=${rd:-0} w=${w:-0} to=${to:-0} n2=${n2:-0}
  REQ[$t]=$((REQ[$t] + req)) CONN[$t]=$((CONN[$t] + c)) READ[$t]=$((READ[$t] + rd))
  WRITE[$t]=$((WRITE[$t] + w)) TMO[$t]=$((TMO[$t] + to)) NON2XX[$t]=$((NON2XX[$t] + n2))
  UPG[$t]=$((UPG[$t] + done)) FAIL[$t]=$((FAIL[$t] + failed)) RDONE[$t]=$((RDONE[$t] + 1))
  DETAIL+=("| $r | $t | $done | $req | $c / $rd / $w / $to | $n2 |")
  log "round $r $t: $done upgrades ($failed failed), $req requests, errors connect $c read $rd write $w timeout $to, non-2xx $n2"
}

for ((r = 1; r <= ROUNDS; r++)); do
  n=${#TARGET_LIST[@]}
  for ((i = 0; i < n; i++)); do
    run_one "${TARGET_LIST[$(((i + r - 1) % n))]}" "$r"
  done
done

# HAProxy's master logs how each former worker ended (after its last session: no client sees it)
if in_list haproxy "$TARGETS" && [ -f "$TMP/haproxy.log" ]; then
  bad=$(grep -c 'Former worker .* exited with code [1-9]' "$TMP/haproxy.log")
  all=$(grep -c 'Former worker .* exited with code' "$TMP/haproxy.log")
  [ "$bad" -gt 0 ] && NOTES+=("haproxy: $bad of $all former workers exited with a non-zero code after their last session ($(grep -o 'Former worker .* exited with code [1-9].*' "$TMP/haproxy.log" | sed 's/.*exited with //' | sort | uniq -c | sed 's/^ *//' | paste -sd, -)), as the master's log says")
fi

# ---------------------------------------------------------------- the table
label() {
  case "$1" in
    ballast) echo "Ballast, \`ballast upgrade\` (sockets handed over)" ;;
    haproxy) echo "HAProxy $(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p'), master-worker, \`kill -USR2\`" ;;
    restart) echo "Ballast, restart beside (\`shared_port: true\`, SIGTERM the old)" ;;
    steady) echo "Ballast, no upgrade (the noise floor)" ;;
  esac
}
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null)" ] && commit="$commit + uncommitted changes"
mkdir -p "$(dirname "$OUT")"
{
  echo "Run $(date -u '+%Y-%m-%d %H:%M') UTC on $(nproc) CPUs, Linux $(uname -r), load average at start $LOAD_AT_START; \`$CMD $ORIG_ARGS\`: $ROUNDS round(s), up to $UPGRADES upgrades per target and round ~${INTERVAL} s apart, under \`wrk -t$WRK_THREADS -c$WRK_CONNS -d${DURATION}s --timeout ${WRK_TIMEOUT}s -H 'Connection: close'\` to nginx \`return 200\`; Ballast $commit ($BALLAST_BIN), nginx $(nginx -v 2>&1 | sed 's|.*/||'). Wall time: $(( $(date +%s) - T_START )) s."
  echo
  echo "| target | rounds | upgrades | failed upgrades | requests | socket errors: connect | read | write | timeout | non-2xx | errors per upgrade |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for t in "${TARGET_LIST[@]}"; do
    errs=$((CONN[$t] + READ[$t] + WRITE[$t] + TMO[$t] + NON2XX[$t]))
    if [ "${UPG[$t]}" -gt 0 ]; then per=$(awk -v e="$errs" -v u="${UPG[$t]}" 'BEGIN { printf "%.2f", e / u }'); else per="— ($errs errors)"; fi
    echo "| $(label "$t") | ${RDONE[$t]} | ${UPG[$t]} | ${FAIL[$t]} | ${REQ[$t]} | ${CONN[$t]} | ${READ[$t]} | ${WRITE[$t]} | ${TMO[$t]} | ${NON2XX[$t]} | $per |"
  done
  echo
  echo "Per round (socket errors connect / read / write / timeout):"
  echo
  echo "| round | target | upgrades | requests | socket errors | non-2xx |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${DETAIL[@]}"
  if [ ${#NOTES[@]} -gt 0 ]; then
    echo
    for note in "${NOTES[@]}"; do echo "- $note"; done
  fi
} >"$OUT"
echo
cat "$OUT"
log "written to $OUT"
