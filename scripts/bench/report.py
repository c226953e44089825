#!/usr/bin/env python3
"""Render the raw results of scripts/bench-peers.sh as a Markdown table.

Input: a TSV file with one line per measurement: `test<TAB>target<TAB>value<TAB>note`, where
value is a number, `NA` (the measurement failed or does not apply: note says why) or `-` (not
meaningful for this target, e.g. balancer CPU for a direct connection). Several lines for the same
test and target (rounds) are reduced to their median. A second argument, a file of `key=value`
lines, gives the header (date, machine, workers, ...).

Ratios are Ballast's figure divided by the other target's, whatever the direction of the test:
the `better` column says whether higher or lower is better for that row.

Floor (bench-peers.sh --floor): the target `floor` is a minimal relay making Ballast's system
calls and nothing else; `Ballast ÷ floor` is read like the peers' ratios.

Scaling (bench-peers.sh --scaling): the target `ballast2` is the same Ballast binary with
`workers: 2` (meta `ballast2_workers`), measured in the same run. It gets its own column
(`Ballast w2`) and one ratio column, `Ballast w2 ÷ Ballast`, read like the others; it is not
compared with the peers.

Baseline (bench-peers.sh --baseline PATH): the target `baseline` is another Ballast binary (the
"before" build of a change, meta `baseline_rev`) with the same config and workers as `ballast`;
`Ballast ÷ baseline` is the change's effect, read like the peers' ratios.

Socket LB (bench-peers.sh --socket): the target `socket` is the same Ballast binary with the
socket fast path on every listener, its clients in the hooked cgroup. It gets its own column
(`Ballast socket LB`) and the ratio columns `socket ÷ direct` (what the fast path is for:
close to 1), `socket ÷ HAProxy`, `socket ÷ nginx` and `socket ÷ Ballast` (the relay), read
like the others. It is not among Ballast's peers. Meta `socket_steering` (test:steered/relayed,
comma-separated) gives the steering line under the table.
"""

import statistics
import sys

TARGETS = [("direct", "direct"), ("haproxy", "HAProxy"), ("nginx", "nginx"), ("ballast", "Ballast"),
           ("ballast2", "Ballast w2"),  # ballast2: --scaling; its label follows ballast2_workers
           ("floor", "floor"),  # --floor: examples/floor_relay.rs, Ballast's calls without its features
           ("baseline", "baseline"),  # --baseline PATH: another Ballast binary, the same config
           ("socket", "Ballast socket LB")]  # --socket: fastpath: socket, clients in its cgroup
# the names in ratio column headers, where they differ from the column's
SHORT = {"socket": "socket"}

# id, label, unit, better ("higher"/"lower"), format
TESTS = [
    ("bulk_gbps", "iperf3 TCP bulk, 1 stream", "Gbit/s", "higher", "{:.1f}"),
    ("bulk_cpu", "… balancer CPU per GB moved", "CPU-s/GB", "lower", "{:.2f}"),
    ("pp_tcp_p50", "sockperf TCP ping-pong RTT p50 (all on 1 CPU)", "µs", "lower", "{:.1f}"),
    ("pp_tcp_p99", "sockperf TCP ping-pong RTT p99 (all on 1 CPU)", "µs", "lower", "{:.1f}"),
    ("conn_rate", "new connections/s (wrk, Connection: close)", "conn/s", "higher", "k"),
    ("conn_cpu", "… balancer CPU per connection", "µs", "lower", "{:.1f}"),
    ("redis_get", "redis-benchmark GET/s (50 clients)", "req/s", "higher", "k"),
    ("redis_cpu", "… balancer CPU per GET", "µs", "lower", "{:.1f}"),
    ("pp_udp_p50", "sockperf UDP ping-pong RTT p50 (all on 1 CPU)", "µs", "lower", "{:.1f}"),
    ("pp_udp_p99", "sockperf UDP ping-pong RTT p99 (all on 1 CPU)", "µs", "lower", "{:.1f}"),
    ("udp_rate", "sockperf UDP one-way, delivered (@RATE@ offered)", "dgram/s", "higher", "k"),
    ("udp_loss", "… loss", "%", "lower", "{:.1f}"),
    ("udp_cpu", "… balancer CPU per datagram it received", "µs", "lower", "{:.2f}"),
    ("dns_qps", "dnsperf → dnsmasq", "queries/s", "higher", "k"),
    ("dns_cpu", "… balancer CPU per query", "µs", "lower", "{:.1f}"),
    ("dns_mix_qps", "dnsperf → dnsmasq, 64 names of different lengths", "queries/s", "higher", "k"),
    ("dns_mix_cpu", "… balancer CPU per query", "µs", "lower", "{:.1f}"),
    ("idle_kib", "memory per idle TCP session (@IDLE@ open)", "KiB", "lower", "{:.1f}"),
    ("peak_rss", "peak RSS of the balancer (VmHWM, load tests)", "MiB", "lower", "{:.1f}"),
]

# rows where a ratio says nothing useful (a loss of 40 % against 1 % is not "40x worse")
NO_RATIO = {"udp_loss"}


def fmt(value, spec):
    if spec == "k":
        return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"
    return spec.format(value)


def load(path):
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t")
            while len(parts) < 4:
                parts.append("")
            test, target, value, note = parts[:4]
            rows.setdefault((test, target), []).append((value, note))
    return rows


def reduce(entries):
    """(median or None, kind, note, n): kind is 'num', 'na' or 'dash'."""
    nums = []
    notes = []
    for value, note in entries:
        try:
            nums.append(float(value))
            if note:
                notes.append(note)
        except ValueError:
            if value == "-":
                return None, "dash", note, 0
            notes.append(note or "no result")
    if nums:
        return statistics.median(nums), "num", "; ".join(dict.fromkeys(notes)), len(nums)
    return None, "na", "; ".join(dict.fromkeys(notes)) or "not run", 0


def main():
    results = load(sys.argv[1])
    meta = {}
    if len(sys.argv) > 2:
        with open(sys.argv[2], encoding="utf-8") as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    meta[k] = v
    run_targets = meta.get("targets", "direct,haproxy,nginx,ballast").split(",")
    w2 = meta.get("ballast2_workers", "2")
    names = dict(TARGETS, ballast2=f"Ballast w{w2}")
    targets = [(t, names[t]) for t, _ in TARGETS if t in run_targets]
    has_ballast = any(t == "ballast" for t, _ in targets)
    has_ballast2 = any(t == "ballast2" for t, _ in targets)
    has_socket = any(t == "socket" for t, _ in targets)
    peers = [(t, n) for t, n in targets if t not in ("ballast", "ballast2", "socket")]  # floor included
    # (numerator, denominator) of every ratio column, in order
    ratios = [("ballast", t) for t, _ in peers] if has_ballast else []
    if has_ballast and has_ballast2:
        ratios.append(("ballast2", "ballast"))
    if has_socket:
        ratios += [("socket", t) for t in ("direct", "haproxy", "nginx", "ballast")
                   if any(t == u for u, _ in targets)]
    footnotes = []

    def note_ref(text):
        if text not in footnotes:
            footnotes.append(text)
        return f"[{footnotes.index(text) + 1}]"

    out = []
    if meta:
        if has_ballast2:
            workers = (f"**{meta.get('workers', '?')} worker(s)** for every balancer but ballast2, "
                       f"which is the same Ballast binary with **{w2} workers** (column "
                       f"{names['ballast2']})")
        else:
            workers = f"**{meta.get('workers', '?')} worker(s)** for every balancer"
        out.append(f"Run {meta.get('date', '?')} on {meta.get('machine', '?')}; "
                   f"`{meta.get('command', '')}` ({meta.get('mode', '?')} mode, "
                   f"{meta.get('rounds', '1')} round(s) of {meta.get('duration', '?')} s per test, "
                   f"figures are medians), {workers}; "
                   f"Ballast {meta.get('ballast_rev', '?')}"
                   + (f", baseline {meta['baseline_rev']} (same config)" if "baseline_rev" in meta else "")
                   + f"; {meta.get('peers', '')}. "
                   f"Load average at start: {meta.get('loadavg', '?')}. Wall time: "
                   f"{meta.get('wall', '?')} s.")
        out.append("")
    head = ["test", "unit", "better"] + [n for _, n in targets]
    head += [f"{SHORT.get(a, names[a])} ÷ {SHORT.get(b, names[b])}" for a, b in ratios]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    wanted = [t for t in meta.get("tests", "").split(",") if t]
    for test, label, unit, better, spec in TESTS:
        label = label.replace("@RATE@", meta.get("udp_rate_h", "?")).replace("@IDLE@", meta.get("idle_n", "?"))
        reduced = {t: reduce(results[(test, t)]) for t, _ in targets if (test, t) in results}
        if not reduced:
            continue
        cells = [label, unit, "↑" if better == "higher" else "↓"]
        for t, _ in targets:
            value, kind, note, _n = reduced.get(t, (None, "na", "not run", 0))
            if kind == "num":
                cell = fmt(value, spec)
                if note:
                    cell += " " + note_ref(note)
            elif kind == "dash":
                cell = "—"
            else:
                cell = "n/a " + note_ref(note)
            cells.append(cell)
        for a, b in ratios:
            x = reduced.get(a, (None, "na", "", 0))
            o = reduced.get(b, (None, "na", "", 0))
            if test in NO_RATIO:
                cells.append("—")
            elif x[1] == "num" and o[1] == "num" and o[0] > 0 and x[0] > 0:
                cells.append(f"{x[0] / o[0]:.2f}×")
            else:
                cells.append("—")
        out.append("| " + " | ".join(cells) + " |")
    if footnotes:
        out.append("")
        for i, text in enumerate(footnotes, 1):
            out.append(f"[{i}] {text}  ")
    out.append("")
    scaling = ""
    if has_ballast and has_ballast2:
        scaling = (f"{names['ballast2']} ÷ Ballast is the {w2}-worker Ballast's figure ÷ the "
                   f"{meta.get('workers', '?')}-worker one's, read the same way: below 1 on a ↑ row "
                   f"or above 1 on a ↓ row means {w2} workers fell behind. ")
    socket = ""
    if has_socket:
        steering = [item.split(":", 1) for item in meta.get("socket_steering", "").split(",") if ":" in item]
        if steering:
            out.append("Socket LB steering (from its /api/v1/status, per test, summed over rounds): "
                       + ", ".join(f"{test} {counts.split('/')[0]} steered / {counts.split('/')[1]} "
                                   "through the relay" for test, counts in steering)
                       + ". Steered counts connects, and for unconnected UDP every datagram; the "
                       "relay's are TCP connections and UDP flows.")
            out.append("")
        socket = ("socket ÷ X is the socket fast path's figure ÷ X's: socket ÷ direct near 1 "
                  "means its clients get what a direct connection gets. ")
    out.append("Ratios are Ballast's figure ÷ the other target's: above 1 is better for ↑ rows, "
               "below 1 is better for ↓ rows. " + scaling + socket +
               "RTTs are full round trips (sockperf `--full-rtt`). "
               "CPU is utime+stime of every balancer process from /proc/PID/stat.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
