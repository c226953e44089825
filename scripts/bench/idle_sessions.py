#!/usr/bin/env python3
"""Idle TCP sessions for scripts/bench-peers.sh (memory per idle session).

Two roles, each its own process so that neither hits the per-process open-files limit together
with the other (the hard limit on the reference machine is 20 000 and even root cannot raise it):

  sink   --port P                 accept every connection, echo its first byte, then keep it open
                                  and idle until killed.
  client --port P --count N       open N connections to 127.0.0.1:P, send one byte on each and wait
                                  for its echo (so the balancer in between has really connected to
                                  the sink and relayed both ways), print "ready N", then keep them
                                  all open and idle until SIGTERM or --hold seconds.

The client prints "ready K" with K < N and a reason on stderr when it could not open all of them
within --timeout seconds; the caller reports that instead of a figure.
"""

import argparse
import errno
import resource
import selectors
import signal
import socket
import sys
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def sink(args):
    raise_nofile()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(4096)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        for key, _ in sel.select():
            if key.data is None:
                while True:
                    try:
                        conn, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:  # EMFILE and friends: leave it in the backlog
                        if e.errno in (errno.EMFILE, errno.ENFILE):
                            time.sleep(0.05)
                            break
                        raise
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "new")
            else:
                conn = key.fileobj
                try:
                    data = conn.recv(64)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:  # the peer closed: free the descriptor for the next run
                    sel.unregister(conn)
                    conn.close()
                    continue
                if key.data == "new":
                    try:
                        conn.send(data[:1])
                    except OSError:
                        sel.unregister(conn)
                        conn.close()
                        continue
                    sel.modify(conn, selectors.EVENT_READ, "held")  # idle from now on


def client(args):
    hard = raise_nofile()
    if args.count + 64 > hard:
        print(f"ready 0", flush=True)
        print(f"needs {args.count + 64} open files, hard limit is {hard}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    sel = selectors.DefaultSelector()
    done = []
    errors = {}
    pending = 0
    started = 0
    batch = args.batch
    while (started < args.count or pending) and time.monotonic() < deadline:
        while started < args.count and pending < batch:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((args.host, args.port))
            if rc not in (0, errno.EINPROGRESS):
                errors[errno.errorcode.get(rc, str(rc))] = errors.get(errno.errorcode.get(rc, str(rc)), 0) + 1
                s.close()
                started += 1
                continue
            sel.register(s, selectors.EVENT_WRITE, "connecting")
            started += 1
            pending += 1
        for key, ev in sel.select(timeout=0.2):
            s = key.fileobj
            if key.data == "connecting":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    errors[errno.errorcode.get(err, str(err))] = errors.get(errno.errorcode.get(err, str(err)), 0) + 1
                    sel.unregister(s)
                    s.close()
                    pending -= 1
                    continue
                try:
                    s.send(b"x")
                except OSError as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    sel.unregister(s)
                    s.close()
                    pending -= 1
                    continue
                sel.modify(s, selectors.EVENT_READ, "echo")
            else:
                try:
                    data = s.recv(16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    data = b""
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                sel.unregister(s)
                pending -= 1
                if data:
                    done.append(s)
                else:
                    errors["closed"] = errors.get("closed", 0) + 1
                    s.close()
    print(f"ready {len(done)}", flush=True)
    if len(done) < args.count:
        print(f"opened {len(done)} of {args.count} idle sessions; errors: {errors or 'timeout'}",
              file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(args.hold)  # idle until the caller stops us (SIGTERM) or --hold runs out
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=["sink", "client"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=8000)
    p.add_argument("--batch", type=int, default=256, help="connections in flight at once")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to open all of them")
    p.add_argument("--hold", type=float, default=120.0, help="seconds to keep them open at most")
    args = p.parse_args()
    if args.role == "sink":
        return sink(args)
    return client(args)


if __name__ == "__main__":
    sys.exit(main() or 0)
