#!/usr/bin/env python3
"""Soak: one `quelay server` under churn for a long run (30 minutes by default), sampling
its RSS, open file descriptors and permits, to show that nothing leaks.

    python3 bench/soak.py                       # 30 minutes, 5 of them warm-up
    python3 bench/soak.py --minutes 3 --warmup 1

The churn, all on loopback, through `quelay client` processes (SOCKS5) and the bench target
(`quelay-bench target`):
- downloads of 64 KiB to 4 MiB by user alice, a third of them reset mid-transfer (the local
  socket closes with RST, the client resets the stream);
- UDP sessions by user bob (SOCKS5 UDP ASSOCIATE, a few datagrams echoed, then closed);
- connects: a fresh client started, one download, stopped, every few seconds;
- auth failures: a client with a wrong password started and stopped, every few seconds;
- kicks of bob through the traffic-stats API, and SIGHUP reloads (a user added, then
  removed) every 30 s.

Every 5 s it samples the server's VmRSS, its fd count and, from `/metrics`, the stream and
socket permits held and the UDP sessions open. After the warm-up the run is cut into
windows (5 minutes by default), and each series' mean in every window must stay within ±5%
of its mean in the first window (permits: ±5% or ±1, whichever is more; a permit is whole).
The UDP sessions are a sawtooth by design (each lives until `udpIdleTimeout`, and a kick of
bob ends them all at once), and each holds an fd and a socket permit, so the series compared
are RSS, the fds beyond those of live sessions, the stream permits, and the socket permits
beyond those of live sessions: a leak raises them from window to window. When the churn
stops, every permit must be back at zero. The verdict and the samples go to
bench/results/soak-<time>.json (`--judge FILE` prints the verdict of a saved run again);
exit status 1 when a series drifts, a permit stays held, or the server dies.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as c  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
SAMPLE_EVERY = 5.0
# A UDP session's socket lives until this idle timeout (the client has no way to close it),
# so it bounds how many the churn holds at once.
UDP_IDLE = "10s"
RESET_SHARE = 3  # one download in this many is reset mid-transfer


def server_yaml(port: int, cert: Path, key: Path, metrics: int, api: int, extra_user: bool):
    users = dict(USERS)
    if extra_user:
        users["carol"] = "carol-pw"
    lines = "".join(f"    {u}: {json.dumps(p)}\n" for u, p in users.items())
    return (f"listen: {HOST}:{port}\n"
            f"tls:\n  cert: {json.dumps(str(cert))}\n  key: {json.dumps(str(key))}\n"
            f"auth:\n  type: userpass\n  userpass:\n{lines}"
            "outboundGuard:\n  allowLoopback: true\n"
            f"udpIdleTimeout: {UDP_IDLE}\n"
            f"metrics:\n  listen: {HOST}:{metrics}\n"
            f"trafficStats:\n  listen: {HOST}:{api}\n  secret: soak\n")


def client_yaml(server_port: int, socks: int, auth: str) -> str:
    return (f"server: {HOST}:{server_port}\nauth: {json.dumps(auth)}\n"
            f"tls:\n  insecure: true\n  sni: {c.SNI}\n"
            f"socks5:\n  listen: {HOST}:{socks}\n"
            "engine:\n  workers: 1\n")


class Client:
    """A `quelay client` process with a SOCKS5 port."""

    def __init__(self, quelay: Path, server_port: int, auth: str, dir_: Path, name: str):
        self.socks = c.free_port()
        cfg = dir_ / f"{name}.yaml"
        cfg.write_text(client_yaml(server_port, self.socks, auth))
        self.err = dir_ / f"{name}.err"
        with open(os.devnull, "wb") as out, open(self.err, "wb") as err:
            self.p = c.spawn([quelay, "client", "-c", cfg], out, err, {"QUELAY_LOG": "warn"},
                             cwd=dir_)
        c.wait_ready(self.p, lambda: c.tcp_listening(self.socks), name, str(self.err))

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        c.LIVE.pop(self.p.pid, None)


def download(socks: int, target: int, n: int, reset: bool) -> None:
    with socket.socket() as s:
        s.settimeout(20)
        s.connect((HOST, socks))
        c.socks5_connect(s, (HOST, target))
        s.sendall(b"d" + struct.pack(">Q", n))
        stop_at = random.randrange(1, n) if reset else n
        got = 0
        while got < stop_at:
            k = len(s.recv(min(1 << 16, stop_at - got)))
            if not k:
                raise RuntimeError(f"EOF after {got} of {n} bytes")
            got += k
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def udp_session(socks: int, target: int, datagrams: int) -> None:
    with socket.socket() as ctl, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        ctl.settimeout(10)
        u.settimeout(5)
        ctl.connect((HOST, socks))
        ctl.sendall(b"\x05\x01\x00")
        if c.recv_exact(ctl, 2) != b"\x05\x00":
            raise RuntimeError("SOCKS5: no-auth refused")
        ctl.sendall(b"\x05\x03\x00\x01" + socket.inet_aton("0.0.0.0") + struct.pack(">H", 0))
        rep = c.recv_exact(ctl, 10)
        if rep[1] != 0:
            raise RuntimeError(f"UDP ASSOCIATE refused: {rep[1]}")
        relay = (socket.inet_ntoa(rep[4:8]), struct.unpack(">H", rep[8:10])[0])
        if relay[0] == "0.0.0.0":
            relay = (HOST, relay[1])
        head = b"\x00\x00\x00\x01" + socket.inet_aton(HOST) + struct.pack(">H", target)
        for i in range(datagrams):
            payload = os.urandom(random.randrange(16, 1200))
            u.sendto(head + payload, relay)
            data, _ = u.recvfrom(65535)
            if data[10:] != payload:
                raise RuntimeError("UDP echo mismatch")


def http(url: str, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Authorization": "soak"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def metrics(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in http(f"http://{HOST}:{port}/metrics").decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{", 1)[0]
        try:
            out[base] = out.get(base, 0.0) + float(value)
        except ValueError:
            pass
    return out


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# What each window mean is compared on, and the slack beside ±5%. The UDP sessions are a
# sawtooth by design (each lives until udpIdleTimeout, and a kick of bob ends them all), and
# each holds a socket permit and an fd: so the fds and socket permits they do not explain
# are what a leak would raise.
SERIES = {
    "rss_kib": (lambda s: s["rss_kib"], 0),
    "fds_beyond_sessions": (lambda s: s["fds"] - s["sockets_held"], 0),
    "streams_held": (lambda s: s["streams_held"], 1),
    "socket_permits_beyond_sessions": (lambda s: s["sockets_held"] - s["udp_sessions_open"], 1),
}


def judge(samples: list[dict], warmup: float, window: float) -> tuple[dict, bool]:
    """Cuts the samples after `warmup` minutes into `window`-minute windows (a last window
    with fewer than half the samples of a full one is left out) and compares each series'
    window means with the first window's."""
    windows: list[list[dict]] = []
    for s in samples:
        if s["t"] < warmup * 60:
            continue
        i = int((s["t"] - warmup * 60) // (window * 60))
        while len(windows) <= i:
            windows.append([])
        windows[i].append(s)
    windows = [w for w in windows if w]
    if len(windows) > 1 and len(windows[-1]) < len(windows[0]) / 2:
        windows.pop()
    verdict: dict = {"windows": [len(w) for w in windows]}
    ok = len(windows) >= 2
    for name, (value, slack) in SERIES.items():
        means = [statistics.fmean(value(s) for s in w) for w in windows]
        if not means:
            continue
        base = means[0]
        worst = max(abs(m - base) for m in means)
        within = worst <= max(0.05 * base, slack)
        verdict[name] = {"window_means": [round(m, 1) for m in means],
                         "worst_pct": round(100 * worst / base, 2) if base else None,
                         "within": within}
        ok &= within
    for k in ("fds", "sockets_held", "udp_sessions_open"):
        verdict[f"{k}_window_means"] = [round(statistics.fmean(s[k] for s in w), 1)
                                       for w in windows]
    return verdict, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0, help="minutes before the baseline")
    ap.add_argument("--window", type=float, default=5.0, help="minutes per compared window")
    ap.add_argument("--judge", metavar="REPORT",
                    help="only print the verdict on the samples of an earlier report")
    ap.add_argument("--quelay-bin", help="use this quelay binary; no cargo build")
    ap.add_argument("--threads", type=int, default=8, help="download threads")
    a = ap.parse_args()
    if a.judge:
        report = json.loads(Path(a.judge).read_text())
        verdict, ok = judge(report["samples"], report["warmup_minutes"], a.window)
        verdict["after_churn"] = report["verdict"].get("after_churn")
        print(json.dumps({"verdict": verdict, "ok": ok}, indent=1))
        return 0 if ok else 1
    try:
        quelay, bench = c.build_quelay(a.quelay_bin, [["target", "--help"]])
    except c.SetupError as e:
        c.log(f"soak.py: setup failed: {e}")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="quelay-soak-"))
    cert, key = c.make_cert(tmp, None)
    ctx = c.Ctx(quelay=quelay, bench=bench, singbox=Path("/nonexistent"), cert=cert, key=key,
                tmp=tmp)
    target = c.ensure_target(ctx).port
    port, mport, api = c.free_port(), c.free_port(), c.free_port()
    cfg = tmp / "server.yaml"
    cfg.write_text(server_yaml(port, cert, key, mport, api, False))
    err_path = tmp / "server.err"
    with open(tmp / "server.out", "wb") as out, open(err_path, "wb") as err:
        server = c.spawn([quelay, "server", "-c", cfg], out, err, {"QUELAY_LOG": "warn"},
                         cwd=tmp)
    c.wait_ready(server, lambda: c.udp_bound(port) and c.tcp_listening(mport), "server",
                 str(err_path))
    alice = Client(quelay, port, "alice:alice-pw", tmp, "alice")
    bob = Client(quelay, port, "bob:bob-pw", tmp, "bob")

    stop = threading.Event()
    counts = {k: 0 for k in ("downloads", "resets", "udp_sessions", "connects",
                             "auth_failures", "kicks", "reloads")}
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def count(k: str, n: int = 1) -> None:
        with lock:
            counts[k] += n

    def failed(k: str, e: Exception) -> None:
        with lock:
            errors[k] = errors.get(k, 0) + 1
            if errors[k] <= 3:
                c.log(f"{k}: {e}")

    def downloads() -> None:
        while not stop.is_set():
            reset = random.randrange(RESET_SHARE) == 0
            try:
                download(alice.socks, target, random.randrange(64 << 10, 4 << 20), reset)
                count("resets" if reset else "downloads")
            except Exception as e:  # noqa: BLE001 - counted and shown
                failed("download", e)
                time.sleep(0.2)

    def udp() -> None:
        while not stop.is_set():
            try:
                udp_session(bob.socks, target, random.randrange(1, 20))
                count("udp_sessions")
            except Exception as e:  # noqa: BLE001
                failed("udp", e)  # a kick of bob closes sessions in flight: expected
                time.sleep(0.5)

    def connects() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                cl = Client(quelay, port, "alice:alice-pw", tmp, f"churn{i % 2}")
                try:
                    download(cl.socks, target, 256 << 10, False)
                    count("connects")
                finally:
                    cl.stop()
            except Exception as e:  # noqa: BLE001
                failed("connect", e)
            stop.wait(3)

    def auth_failures() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                cl = Client(quelay, port, "alice:wrong", tmp, f"wrong{i % 2}")
                stop.wait(2)
                cl.stop()
                count("auth_failures")
            except Exception as e:  # noqa: BLE001
                failed("auth failure client", e)
            stop.wait(3)

    def operations() -> None:
        flip = False
        while not stop.wait(15):
            try:
                http(f"http://{HOST}:{api}/kick", json.dumps(["bob"]).encode())
                count("kicks")
            except Exception as e:  # noqa: BLE001
                failed("kick", e)
            if stop.wait(15):
                break
            flip = not flip
            cfg.write_text(server_yaml(port, cert, key, mport, api, flip))
            server.send_signal(signal.SIGHUP)
            count("reloads")

    workers = [threading.Thread(target=downloads, daemon=True) for _ in range(a.threads)]
    workers += [threading.Thread(target=udp, daemon=True) for _ in range(2)]
    workers += [threading.Thread(target=f, daemon=True)
                for f in (connects, auth_failures, operations)]
    for t in workers:
        t.start()

    samples = []
    t0 = time.monotonic()
    end = t0 + a.minutes * 60
    dead = None
    while time.monotonic() < end:
        time.sleep(SAMPLE_EVERY)
        if server.poll() is not None:
            dead = f"server exited ({server.returncode}): {c.tail(str(err_path), 600)}"
            break
        try:
            m = metrics(mport)
        except Exception as e:  # noqa: BLE001
            failed("metrics", e)
            continue
        st = c.proc_status(server.pid)
        s = {"t": round(time.monotonic() - t0, 1), "rss_kib": st.get("VmRSS", 0),
             "fds": fds(server.pid),
             "streams_held": m.get("quelay_streams_held", 0),
             "sockets_held": m.get("quelay_sockets_held", 0),
             "udp_sessions_open": m.get("quelay_udp_sessions", 0),
             "connections": m.get("quelay_connections", 0)}
        with lock:
            s.update(counts)
        samples.append(s)
        c.log(" ".join(f"{k}={v}" for k, v in s.items()))
    stop.set()
    for t in workers:
        t.join(15)
    alice.stop()
    bob.stop()
    quiet = None
    if dead is None:
        time.sleep(3)  # every stream closed: permits must be back at zero
        m = metrics(mport)
        quiet = {k: m.get(f"quelay_{k}", 0) for k in ("streams_held", "sockets_held",
                                                      "udp_sessions")}  # open now
        quiet["fds"] = fds(server.pid)
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    verdict, ok = judge(samples, a.warmup, a.window)
    ok &= dead is None
    if quiet is not None:
        verdict["after_churn"] = quiet
        ok &= quiet["streams_held"] == 0 and quiet["sockets_held"] == 0
        ok &= quiet["udp_sessions"] == 0
    report = {"minutes": a.minutes, "warmup_minutes": a.warmup, "counts": counts,
              "errors": errors, "verdict": verdict, "ok": ok, "dead": dead,
              "quelay": c.binary_version(quelay) if hasattr(c, "binary_version") else str(quelay),
              "samples": samples}
    out = REPO / "bench/results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("minutes", "counts", "errors", "verdict", "ok",
                                              "dead")}, indent=1))
    print(f"report: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        c.cleanup() if hasattr(c, "cleanup") else None
