#!/usr/bin/env bash
# Regenerates the captured ClientHellos in this folder: a loopback listener records the first
# flight `openssl s_client` sends (the ClientHello and nothing else, since it then waits for the
# server) and writes it as hex. The captures are committed; tests never run this script.
set -euo pipefail
cd "$(dirname "$0")"

capture() {
    local name=$1
    shift
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 - "$port" "$name.hex" <<'PY' &
import socket, sys
port, out = int(sys.argv[1]), sys.argv[2]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
conn, _ = srv.accept()
conn.settimeout(1.0)
data = b""
try:
    while len(data) < 65536:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
except socket.timeout:
    pass
conn.close()
hexed = data.hex()
with open(out, "w") as f:
    for i in range(0, len(hexed), 64):
        f.write(hexed[i:i + 64] + "\n")
PY
    local listener=$!
    sleep 0.3
    timeout 5 openssl s_client -connect "127.0.0.1:$port" "$@" </dev/null >/dev/null 2>&1 || true
    wait "$listener"
    echo "$name: $(tr -d '\n' <"$name.hex" | wc -c | awk '{print $1 / 2}') bytes"
}

capture tls12_sni_alpn -tls1_2 -servername a.example.test -alpn h2,http/1.1
capture tls13_sni_alpn -tls1_3 -servername a.example.test -alpn h2,http/1.1
capture tls13_no_sni -tls1_3 -noservername
capture tls12_no_sni -tls1_2 -noservername
# Upper-case name: the parser lower-cases it.
capture tls13_upper_sni -tls1_3 -servername API.Example.TEST
# A ClientHello larger than one 512-byte record, so openssl itself splits it over several
# records (a long ALPN list pads it out).
capture tls13_fragmented -tls1_3 -servername frag.example.test -max_send_frag 512 \
    -alpn "h2,http/1.1,$(python3 -c 'print(",".join("proto-%02d-%s" % (i, "x" * 40) for i in range(20)))')"
