#!/usr/bin/env python3
"""quelay against sing-box: two Hysteria2 servers under the same load, on loopback.

    python3 bench/compare.py                 # full comparison, 3 rounds (about 10 minutes)
    python3 bench/compare.py --quick         # smaller sizes, shorter runs, 1 round
    python3 bench/compare.py --rounds 2 --out bench/results

It installs what it needs (sing-box 1.14.4 via scripts/get-singbox.sh, cached under
target/peers/bin; quelay and quelay-bench with `cargo build --release` unless --quelay-bin;
a Python venv with matplotlib in target/bench-venv for the SVG charts), then, on 127.0.0.1:

- starts `quelay-bench target` (TCP modes u/d/e/r and UDP echo on one port) once;
- for every sample starts a fresh server, quelay or sing-box, with equivalent settings
  (password, one self-signed ECDSA P-256 certificate, BBR, no bandwidth limits, QUIC
  windows 8 MiB per stream / 20 MiB per connection, log level warn), runs one load
  process to completion under a timeout, reads the server's CPU time and peak RSS from
  /proc, and kills the server;
- interleaves the servers (A, B per scenario; the order alternates per round) over
  several rounds; figures are medians over rounds, ratios medians of per-round pairs.

Load: `quelay-bench hy2` (bulk-down, bulk-up, rr, connect, udp) for both servers, and the
sing-box Hysteria2 client (a "mixed" SOCKS5 inbound) with a small Python SOCKS5 download
load, so that each server is also driven by the reference client.

References measured on the same machine: direct TCP loopback (the same Python download
from the target, no proxy), raw UDP with GSO/GRO (Python sender and receiver), the quelay
QUIC engine alone (`quelay-bench echo` + `quelay-bench quic`), AES-128-GCM at
1200-byte records (`openssl speed`, else the venv's `cryptography`).

Outputs in --out (default bench/results): compare-<timestamp>.json (every sample, the
server configs, the references), .md (the table) and -{goodput,rps,cpu}.svg.

A failed sample (server not listening, server died, load timed out or reported errors)
is recorded with its error and shown as FAIL in the table; the run goes on, and exits 1.
Every subprocess runs under a timeout. README.md (Benchmarks) shows the latest results.

Python 3.11 standard library only (plus the venv for the charts).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine as eng  # noqa: E402  (helpers: /proc CPU, spawn/kill/wait4 with timeout)

from engine import (  # noqa: E402
    GIB, MIB, HOST, LIVE, proc_cpu, kill, kill_all, wait4_timeout, tail, free_udp_port,
    machine, med, parse_size, human_bytes,
)

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "target/bench-venv"
REQUIREMENTS = REPO / "bench/requirements.txt"
PEERS = REPO / "target/peers/bin"
PASSWORD = "secret"
SNI = "hy2.test"
STREAM_WINDOW = 8_388_608  # sing-quic's (and the official server's) fixed defaults
CONN_WINDOW = STREAM_WINDOW * 5 // 2
IMPLS = ("quelay", "sing-box")
START_TIMEOUT = 15.0


class SetupError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Installation


def run_step(what: str, cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)
    except FileNotFoundError as e:
        raise SetupError(f"{what}: {e}") from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"{what}: timed out after {timeout:g} s: {' '.join(cmd)}") from None
    if r.returncode != 0:
        err = (r.stderr or r.stdout).strip().splitlines()[-8:]
        raise SetupError(f"{what} failed (exit {r.returncode}): {' | '.join(err)}")
    return r


def install_singbox() -> Path:
    log("sing-box: scripts/get-singbox.sh target/peers/bin (cached)")
    r = run_step("installing sing-box (scripts/get-singbox.sh)",
                 ["bash", str(REPO / "scripts/get-singbox.sh"), str(PEERS)], 900)
    path = Path(r.stdout.strip().splitlines()[-1])
    if not os.access(path, os.X_OK):
        raise SetupError(f"scripts/get-singbox.sh printed {path}, which is not executable")
    return path


def build_quelay(given: str | None, need: list[list[str]],
                 given_bench: str | None = None) -> tuple[Path, Path]:
    """The relay binary and quelay-bench (load generators, bench target, raw QUIC echo):
    built with cargo unless --quelay-bin is given; quelay-bench is then --quelay-bench-bin,
    else the quelay-bench beside the given quelay. `need`: quelay-bench subcommands that
    must answer."""
    if given:
        p = Path(given).resolve()
        if not os.access(p, os.X_OK):
            raise SetupError(f"--quelay-bin {given}: not an executable file")
        b = p.with_name("quelay-bench")
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        if not target.is_absolute():
            target = REPO / target
        cmd = ["cargo", "build", "--release", "-p", "quelay", "-p", "quelay-bench", "--bins"]
        log(f"quelay: {' '.join(cmd)} (target dir {target})")
        run_step(" ".join(cmd), cmd, 3600)
        p = target / "release/quelay"
        b = target / "release/quelay-bench"
    if given_bench:
        b = Path(given_bench).resolve()
    if need and not os.access(b, os.X_OK):
        raise SetupError(f"{b}: not an executable file; build it with cargo build --release "
                         "-p quelay-bench, or pass --quelay-bench-bin")
    for sub in need:
        try:
            r = subprocess.run([str(b), *sub], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SetupError(f"{b} {' '.join(sub)}: {e}") from None
        if r.returncode != 0:
            raise SetupError(f"{b} has no `quelay-bench {sub[0]}`; build a quelay-bench that "
                             f"has it: {(r.stderr or r.stdout).strip()[:300]}")
    return p, b


def ensure_venv() -> Path:
    """target/bench-venv with the packages of bench/requirements.txt; returns its python."""
    py = VENV / "bin/python"
    stamp = VENV / ".requirements"
    want = REQUIREMENTS.read_text()
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    log(f"venv: creating {VENV.relative_to(REPO)} and installing bench/requirements.txt "
        "from PyPI (once)")
    if not py.exists():
        run_step("python3 -m venv target/bench-venv", [sys.executable, "-m", "venv", str(VENV)],
                 300)
    run_step("pip install -r bench/requirements.txt (into target/bench-venv)",
             [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "-r", str(REQUIREMENTS)], 1200)
    run_step("importing matplotlib in target/bench-venv", [str(py), "-c", "import matplotlib"],
             120)
    stamp.write_text(want)
    return py


def make_cert(dir_: Path, venv_py: Path | None) -> tuple[Path, Path]:
    """ECDSA P-256, CN and SAN hy2.test + 127.0.0.1: the certificate of tests/support."""
    cert, key = dir_ / "cert.pem", dir_ / "key.pem"
    if shutil.which("openssl"):
        run_step("openssl req (self-signed certificate)",
                 ["openssl", "req", "-x509", "-newkey", "ec",
                  "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
                  "-subj", f"/CN={SNI}", "-addext", f"subjectAltName=DNS:{SNI},IP:127.0.0.1",
                  "-keyout", str(key), "-out", str(cert)], 60)
        return cert, key
    if venv_py is None:
        raise SetupError("no openssl to make the certificate (and no venv: --no-charts)")
    run_step("certificate with cryptography", [str(venv_py), "-c", CERT_PY, str(cert), str(key)],
             60)
    return cert, key


CERT_PY = r"""
import sys, datetime, ipaddress
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
k = ec.generate_private_key(ec.SECP256R1())
n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hy2.test")])
now = datetime.datetime.now(datetime.timezone.utc)
c = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(k.public_key())
     .serial_number(x509.random_serial_number()).not_valid_before(now)
     .not_valid_after(now + datetime.timedelta(days=3650))
     .add_extension(x509.SubjectAlternativeName([x509.DNSName("hy2.test"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
     .sign(k, hashes.SHA256()))
open(sys.argv[1], "wb").write(c.public_bytes(serialization.Encoding.PEM))
open(sys.argv[2], "wb").write(k.private_bytes(serialization.Encoding.PEM,
     serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
"""


# ---------------------------------------------------------------------------------------------
# Processes


def port_in(table: str, port: int, state: str | None = None) -> bool:
    want = f":{port:04X}"
    try:
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split(None, 4)
                if len(cols) >= 4 and cols[1].endswith(want) and (state is None
                                                                   or cols[3] == state):
                    return True
    except OSError:
        pass
    return False


def udp_bound(port: int) -> bool:
    return port_in("/proc/net/udp", port) or port_in("/proc/net/udp6", port)


def tcp_listening(port: int) -> bool:
    """From /proc (state 0A = LISTEN): no probe connection that a relay would see."""
    return port_in("/proc/net/tcp", port, "0A") or port_in("/proc/net/tcp6", port, "0A")


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (the target uses both)."""
    for _ in range(50):
        p = free_udp_port()
        with socket.socket() as s:
            try:
                s.bind((HOST, p))
                return p
            except OSError:
                continue
    raise RuntimeError("no free port")


def spawn(cmd: list[str], out, err, env: dict | None = None, cwd=None) -> subprocess.Popen:
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=out,
                         stderr=err, cwd=cwd or REPO, env=e, start_new_session=True)
    LIVE[p.pid] = p
    return p


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in KiB from /proc/PID/status."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


@dataclass
class Proc:
    name: str
    p: subprocess.Popen
    addr: str
    port: int
    err_path: str

    def alive(self) -> bool:
        return self.p.poll() is None


def wait_ready(p: subprocess.Popen, ready, what: str, err_path: str,
               timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited ({p.returncode}) before it was ready: "
                               f"{tail(err_path, 600)}")
        time.sleep(0.02)
    kill(p)
    raise RuntimeError(f"{what} not ready after {timeout:g} s: {tail(err_path, 600)}")


QUELAY_MAX_STREAMS = [0]  # quic.maxIncomingStreams; 0 = quelay's default (1024)
QUELAY_EXTRA_YAML = [""]  # appended to quelay's config (bench/acl.py: an `acl` section)
SERVER_HOST = [HOST]  # where servers listen and clients dial (bench/cc.py --two-hosts: a veth)


def quelay_yaml(port: int, cert: Path, key: Path) -> str:
    extra = (f"  maxIncomingStreams: {QUELAY_MAX_STREAMS[0]}\n" if QUELAY_MAX_STREAMS[0]
             else "")
    return (f"listen: {SERVER_HOST[0]}:{port}\n"
            f"tls:\n  cert: {json.dumps(str(cert))}\n  key: {json.dumps(str(key))}\n"
            f"auth:\n  type: password\n  password: {json.dumps(PASSWORD)}\n"
            "outboundGuard:\n  allowLoopback: true\n"
            "quic:\n"
            f"  initStreamReceiveWindow: {STREAM_WINDOW}\n"
            f"  maxStreamReceiveWindow: {STREAM_WINDOW}\n"
            f"  initConnReceiveWindow: {CONN_WINDOW}\n"
            f"  maxConnReceiveWindow: {CONN_WINDOW}\n"
            "  maxIdleTimeout: 30s\n" + extra + QUELAY_EXTRA_YAML[0])


def singbox_server_json(port: int, cert: Path, key: Path) -> str:
    return json.dumps({
        "log": {"level": "warn"},
        "inbounds": [{
            "type": "hysteria2", "tag": "hy2-in", "listen": SERVER_HOST[0], "listen_port": port,
            "users": [{"name": "u", "password": PASSWORD}],
            "tls": {"enabled": True, "alpn": ["h3"],
                    "certificate_path": str(cert), "key_path": str(key)},
        }],
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }, indent=1)


def singbox_client_json(socks_port: int, server_port: int) -> str:
    return json.dumps({
        "log": {"level": "warn"},
        "inbounds": [{"type": "mixed", "tag": "mixed-in", "listen": HOST,
                      "listen_port": socks_port}],
        "outbounds": [{
            "type": "hysteria2", "tag": "hy2-out", "server": SERVER_HOST[0],
            "server_port": server_port,
            "password": PASSWORD,
            "tls": {"enabled": True, "server_name": SNI, "insecure": True, "alpn": ["h3"]},
        }],
        "route": {"final": "hy2-out"},
    }, indent=1)


@dataclass
class Ctx:
    quelay: Path
    bench: Path  # quelay-bench: `target`, `hy2` and the engine reference's `echo` + `quic`
    singbox: Path
    cert: Path
    key: Path
    tmp: Path
    target: Proc | None = None
    target_impl: str = "quelay"
    target_restarts: int = 0


def start_server(impl: str, ctx: Ctx, dir_: Path) -> Proc:
    port = free_port()
    err_path = str(dir_ / f"{impl}.err")
    if impl == "quelay":
        cfg = dir_ / "server.yaml"
        cfg.write_text(quelay_yaml(port, ctx.cert, ctx.key))
        cmd, env = [ctx.quelay, "server", "-c", cfg], {"QUELAY_LOG": "warn"}
    else:
        cfg = dir_ / "server.json"
        cfg.write_text(singbox_server_json(port, ctx.cert, ctx.key))
        cmd, env = [ctx.singbox, "run", "-c", cfg], {}
    with open(dir_ / f"{impl}.out", "wb") as out, open(err_path, "wb") as err:
        p = spawn(cmd, out, err, env, cwd=dir_)
    wait_ready(p, lambda: udp_bound(port), f"{impl} server", err_path)
    return Proc(impl, p, f"{HOST}:{port}", port, err_path)


def start_sb_client(server_port: int, ctx: Ctx, dir_: Path) -> Proc:
    port = free_port()
    cfg = dir_ / "client.json"
    cfg.write_text(singbox_client_json(port, server_port))
    err_path = str(dir_ / "sb-client.err")
    with open(dir_ / "sb-client.out", "wb") as out, open(err_path, "wb") as err:
        p = spawn([ctx.singbox, "run", "-c", cfg], out, err, cwd=dir_)
    wait_ready(p, lambda: tcp_listening(port), "sing-box client", err_path)
    return Proc("sb-client", p, f"{HOST}:{port}", port, err_path)


def ensure_target(ctx: Ctx) -> Proc:
    if ctx.target is not None and ctx.target.alive():
        return ctx.target
    if ctx.target is not None:
        ctx.target_restarts += 1
        log(f"target died ({tail(ctx.target.err_path)}); restarting it")
    port = free_port()
    err_path = str(ctx.tmp / f"target-{ctx.target_restarts}.err")
    if ctx.target_impl == "quelay":
        cmd = [ctx.bench, "target", "--listen", f"{HOST}:{port}"]
    else:  # the harness's own Python target: for testing this script without the Rust one
        cmd = [sys.executable, __file__, "_pytarget", "--listen", f"{HOST}:{port}"]
    with open(ctx.tmp / "target.out", "wb") as out, open(err_path, "wb") as err:
        p = spawn(cmd, out, err, {"QUELAY_LOG": "warn"})
    wait_ready(p, lambda: tcp_listening(port) and udp_bound(port), "bench target", err_path)
    ctx.target = Proc("target", p, f"{HOST}:{port}", port, err_path)
    return ctx.target


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Scenario:
    key: str  # unique id, used in file names and the JSON
    label: str  # table label
    kind: str  # "hy2" (quelay-bench hy2) or "sbclient" (sing-box client + SOCKS5 load)
    group: str  # bulk | rr | connect | udp
    args: list[str] = field(default_factory=list)
    total_bytes: int = 0  # bulk: payload bytes expected
    duration: float = 0.0
    connections: int = 1
    streams: int = 1

    def timeout(self) -> float:
        if self.total_bytes:
            return 30 + self.total_bytes * 8 / 0.1e9  # down to 0.1 Gbit/s
        return self.duration + 30


def build_scenarios(a) -> list[Scenario]:
    q = a.quick
    big = a.bytes or (128 * MIB if q else 512 * MIB)
    sb_big = a.sb_bytes or (64 * MIB if q else 256 * MIB)
    d = a.duration or (2.0 if q else 5.0)
    sc: list[Scenario] = []
    for mode in ("down", "up"):
        for c, s in ((1, 1), (8, 4)):
            per = big // (c * s)
            sc.append(Scenario(
                key=f"bulk-{mode}-{c}x{s}",
                label=f"bulk {mode}load {c}×{s}, {human_bytes(big)}",
                kind="hy2", group="bulk", total_bytes=per * c * s, connections=c, streams=s,
                args=["--scenario", f"bulk-{mode}", "--connections", str(c), "--streams",
                      str(s), "--bytes", str(per)]))
    for k, conns in ((100, 1), (1000, 4), (10000, 16)):
        sc.append(Scenario(
            key=f"rr-{k}", label=f"rr 1 KiB, {k} concurrent ({conns} conn)", kind="hy2",
            group="rr", duration=d, connections=conns,
            args=["--scenario", "rr", "--connections", str(conns), "--concurrency", str(k),
                  "--size", "1024", "--duration", f"{d:g}"]))
    sc.append(Scenario(
        key="connect", label="connect (handshake + auth), 8 concurrent", kind="hy2",
        group="connect", duration=d,
        args=["--scenario", "connect", "--concurrency", "8", "--duration", f"{d:g}"]))
    for rate in (5000, 20000):
        sc.append(Scenario(
            key=f"udp-{rate // 1000}k", label=f"UDP echo 1 KiB at {rate} pkt/s", kind="hy2",
            group="udp", duration=d, args=["--scenario", "udp", "--rate", str(rate),
                                           "--size", "1024", "--duration", f"{d:g}"]))
    for c in (1, 4):
        per = sb_big // c
        sc.append(Scenario(
            key=f"sb-down-{c}", label=f"sing-box client, download {c} TCP, "
                                      f"{human_bytes(per * c)}",
            kind="sbclient", group="bulk", total_bytes=per * c, connections=c,
            args=["--mode", "d", "--connections", str(c), "--bytes", str(per)]))
    if a.only:
        sc = [s for s in sc if any(o.lower() in s.key for o in a.only)]
    return sc


def load_cmd(sc: Scenario, ctx: Ctx, server: Proc, socks: Proc | None, timeout: float):
    if sc.kind == "hy2":
        return [ctx.bench, "hy2", "--server", server.addr, "--auth", PASSWORD,
                "--sni", SNI, "--target", ctx.target.addr, *sc.args, "--timeout", str(int(timeout)),
                "--json"]
    return [sys.executable, __file__, "_socksload", "--socks", socks.addr,
            "--target", ctx.target.addr, *sc.args, "--timeout", str(int(timeout))]


DEATH_GRACE = 7.0  # > the load's QUIC idle timeout (5 s), so it can write a partial report


def wait_load(client: subprocess.Popen, timeout: float, watch: list):
    """Waits for the load process; kills it at the timeout, or DEATH_GRACE seconds after a
    watched process (server, target, sing-box client) died. Returns
    (exit code, rusage, timed_out, the watched Proc that died or None)."""
    deadline = time.monotonic() + timeout
    died, grace_end, timed_out, exited = None, None, False, False
    fd = os.pidfd_open(client.pid)
    try:
        while True:
            if select.select([fd], [], [], 0.2)[0]:
                exited = True
                break
            now = time.monotonic()
            if now > deadline:
                timed_out = True
                break
            if died is None:
                died = next((w for w in watch if w is not None and not w.alive()), None)
                if died is not None:
                    grace_end = now + DEATH_GRACE
            elif now > grace_end:
                break
    finally:
        os.close(fd)
    if not exited:  # not reaped yet, so the pid is still ours
        os.kill(client.pid, signal.SIGKILL)
    _, status, ru = os.wait4(client.pid, 0)
    client.returncode = os.waitstatus_to_exitcode(status)
    LIVE.pop(client.pid, None)
    if died is None:
        died = next((w for w in watch if w is not None and not w.alive()), None)
    return client.returncode, ru, timed_out, died


def parse_json_out(path: str) -> dict | None:
    with open(path, "rb") as f:
        lines = [l for l in f.read().decode(errors="replace").splitlines()
                 if l.startswith("{")]
    for l in reversed(lines):
        try:
            return json.loads(l)
        except json.JSONDecodeError:
            continue
    return None


def run_sample(sc: Scenario, impl: str, ctx: Ctx) -> dict:
    s: dict = {"scenario": sc.key, "impl": impl, "ok": False, "error": None}
    dir_ = Path(tempfile.mkdtemp(prefix=f"{sc.key}-{impl}-", dir=ctx.tmp))
    server = socks = None
    try:
        target = ensure_target(ctx)
        try:
            server = start_server(impl, ctx, dir_)
        except RuntimeError:
            s["start_failed"] = True
            raise
        if sc.kind == "sbclient":
            socks = start_sb_client(server.port, ctx, dir_)
        time.sleep(0.1)
        timeout = sc.timeout()
        cmd = load_cmd(sc, ctx, server, socks, timeout - 5)
        s["load_cmd"] = " ".join([Path(str(cmd[0])).name] + [str(c) for c in cmd[1:]])
        out_path, err_path = str(dir_ / "load.out"), str(dir_ / "load.err")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            cpu0 = proc_cpu(server.p.pid)
            sbc0 = proc_cpu(socks.p.pid) if socks else 0.0
            tgt0 = proc_cpu(target.p.pid)
            t0 = time.perf_counter()
            client = spawn(cmd, out, err)
            rc, ru, timed_out, died = wait_load(client, timeout, [server, target, socks])
            wall = time.perf_counter() - t0
            alive = server.alive()
            cpu1 = proc_cpu(server.p.pid) if alive else None
            st = proc_status(server.p.pid) if alive else {}
            sbc1 = proc_cpu(socks.p.pid) if socks and socks.alive() else None
            tgt1 = proc_cpu(target.p.pid) if target.alive() else None
        rep = parse_json_out(out_path)
        s.update(
            wall_secs=wall, exit_code=rc, timed_out=timed_out,
            load_cpu_secs=ru.ru_utime + ru.ru_stime,
            server_cpu_secs=None if cpu1 is None else cpu1 - cpu0,
            sb_client_cpu_secs=None if sbc1 is None or not socks else sbc1 - sbc0,
            target_cpu_secs=None if tgt1 is None else tgt1 - tgt0,
            server_peak_rss_kib=st.get("VmHWM"), server_rss_end_kib=st.get("VmRSS"),
            report=rep,
        )
        if not alive:
            raise RuntimeError(f"{impl} server died during the run "
                               f"(exit {server.p.returncode}): {tail(server.err_path)}")
        if socks and not socks.alive():
            raise RuntimeError(f"sing-box client died: {tail(socks.err_path)}")
        if died is not None:
            raise RuntimeError(f"the {died.name} died during the run: {tail(died.err_path)}")
        if timed_out:
            raise RuntimeError(f"load timed out after {timeout:g} s (killed)")
        if rep is None:
            raise RuntimeError(f"load exit {rc}, no JSON report: {tail(err_path)}")
        if rc != 0 or rep.get("errors") or rep.get("partial"):
            msgs = rep.get("error_messages") or []
            raise RuntimeError(f"load exit {rc}, {rep.get('errors')} error(s)"
                               f"{' (partial)' if rep.get('partial') else ''}: "
                               f"{'; '.join(map(str, msgs[:3])) or tail(err_path)}")
        derive(sc, s, rep)
        s["ok"] = True
    except Exception as e:  # a failed sample is recorded, never fatal
        s["error"] = str(e)[:800]
    finally:
        for p in (socks, server):
            if p is not None:
                kill(p.p)
        shutil.rmtree(dir_, ignore_errors=True)
    return s


def derive(sc: Scenario, s: dict, rep: dict) -> None:
    """The compared figures of one sample, from the load report and /proc."""
    cpu = s["server_cpu_secs"]
    secs = rep.get("secs") or s["wall_secs"]
    lat = rep.get("latency_us") or {}
    s["p50_us"], s["p99_us"] = lat.get("p50"), lat.get("p99")
    if sc.group == "bulk":
        nbytes = rep.get("bytes") or 0
        if sc.total_bytes and nbytes != sc.total_bytes:
            raise RuntimeError(f"moved {nbytes} bytes, expected {sc.total_bytes}")
        s["gbps"] = (rep.get("goodput_bps") or nbytes * 8 / secs) / 1e9
        s["cpu_per_gib"] = cpu / (nbytes / GIB) if nbytes else None
        s["rate"] = s["gbps"]
        return
    if sc.group == "rr":
        n, rate = rep.get("requests") or 0, rep.get("rps")
    elif sc.group == "connect":
        n = rep.get("handshakes") or rep.get("requests") or 0
        rate = rep.get("handshakes_per_sec") or (n / secs if secs else None)
    else:  # udp: echoed packets
        u = rep.get("udp") or {}
        n = u.get("received") or 0
        rate = n / secs if secs else None
        s["udp_sent"] = u.get("sent")
        s["udp_loss"] = 1 - n / u["sent"] if u.get("sent") else u.get("loss")
    s["requests"] = n
    s["rate"] = rate
    s["cpu_per_1k"] = cpu / (n / 1000) if n else None
    if not n:
        raise RuntimeError("no request completed")


# ---------------------------------------------------------------------------------------------
# References (the physics of this machine)


def ref_tcp(ctx: Ctx, nbytes: int) -> dict:
    """Direct TCP loopback: the SOCKS load's download from the target, without a proxy."""
    target = ensure_target(ctx)
    cmd = [sys.executable, __file__, "_socksload", "--target", target.addr, "--mode", "d",
           "--connections", "1", "--bytes", str(nbytes), "--timeout", "60"]
    r = run_ref(cmd, 90)
    return {"gbps": r["goodput_bps"] / 1e9, "bytes": r["bytes"], "secs": r["secs"],
            "how": "1 TCP connection, Python recv_into(1 MiB) from the bench target ('d' mode)"}


def ref_udp_gso(secs: float) -> dict:
    """Raw UDP, 1200-byte segments, GSO (64 per send) to a GRO receiver, two processes."""
    port = free_udp_port()
    with tempfile.TemporaryDirectory() as tmp:
        rout = os.path.join(tmp, "rx.out")
        with open(rout, "wb") as out, open(os.path.join(tmp, "rx.err"), "wb") as err:
            rx = spawn([sys.executable, __file__, "_udprx", "--port", str(port),
                        "--secs", str(secs + 1.5)], out, err)
        wait_ready(rx, lambda: udp_bound(port), "UDP receiver", os.path.join(tmp, "rx.err"))
        tx = run_ref([sys.executable, __file__, "_udptx", "--port", str(port),
                      "--secs", str(secs)], secs + 30)
        rc, _, to = wait4_timeout(rx, secs + 30)
        rr = parse_json_out(rout)
        if rr is None:
            raise RuntimeError(f"UDP receiver: exit {rc}, no report")
    return {"gbps": rr["bytes"] * 8 / tx["secs"] / 1e9, "sent_gbps": tx["bytes"] * 8
            / tx["secs"] / 1e9, "gso": tx.get("gso"), "gro": rr.get("gro"),
            "how": "Python, 1200-byte segments × 54 per sendmsg (UDP_SEGMENT) to a UDP_GRO "
                   "receiver, received bytes / sender time"}


def ref_engine(ctx: Ctx, nbytes: int) -> dict:
    """quelay's QUIC engine alone: `quelay-bench echo` + `quelay-bench quic` upload 1×1."""
    eng.QUELAY_BENCH = ctx.bench
    c = eng.quelay_bulk("upload", nbytes, "uring", True, "none")
    # engine.run_sample kills every process in LIVE when it ends: hide ours (the target).
    ours = dict(LIVE)
    LIVE.clear()
    try:
        s = eng.run_sample(c, 30 + nbytes * 8 / 0.2e9)
    finally:
        LIVE.update(ours)
    if not s["ok"]:
        raise RuntimeError(s["error"])
    return {"gbps": s["gbps_wall"], "server_cpu_per_gib": s["server_cpu_per_gib"],
            "how": f"bench/engine.py row '{c.name}', {human_bytes(nbytes)}, wall goodput"}


def ref_aes(venv_py: Path | None) -> dict:
    """AES-128-GCM seal throughput at 1200-byte records, one core."""
    if shutil.which("openssl"):
        r = run_ref_raw(["openssl", "speed", "-mr", "-seconds", "2", "-evp", "aes-128-gcm",
                         "-bytes", "1200"], 60)
        for line in r.splitlines():
            if line.startswith("+F:"):
                bps = float(line.split(":")[-1])
                return {"gbps": bps * 8 / 1e9, "how": "openssl speed -evp aes-128-gcm "
                        "-bytes 1200 (encrypt, one core)"}
        raise RuntimeError("openssl speed printed no +F: line")
    if venv_py is None:
        raise RuntimeError("neither openssl nor the venv's cryptography")
    out = run_ref_raw([str(venv_py), "-c", AES_PY], 60)
    return {"gbps": float(out.strip()) * 8 / 1e9,
            "how": "Python cryptography AESGCM.encrypt, 1200 bytes (includes call overhead)"}


AES_PY = r"""
import os, time
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
a = AESGCM(AESGCM.generate_key(128)); n = os.urandom(12); m = os.urandom(1200); k = 0
t0 = time.perf_counter()
while time.perf_counter() - t0 < 2:
    for _ in range(1000): a.encrypt(n, m, None)
    k += 1000
print(k * 1200 / (time.perf_counter() - t0))
"""


def run_ref_raw(cmd: list[str], timeout: float) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:g} s: {cmd[0]}") from None
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exit {r.returncode}: {r.stderr.strip()[-300:]}")
    return r.stdout


def run_ref(cmd: list[str], timeout: float) -> dict:
    out = run_ref_raw(cmd, timeout)
    for l in reversed(out.splitlines()):
        if l.startswith("{"):
            rep = json.loads(l)
            if rep.get("errors"):
                raise RuntimeError("; ".join(rep.get("error_messages", []))[:300])
            return rep
    raise RuntimeError("no JSON report")


def references(ctx: Ctx, a, venv_py: Path | None) -> dict:
    q = a.quick
    out = {}
    for name, fn in (
        ("tcp_loopback", lambda: ref_tcp(ctx, (1 if q else 4) * GIB)),
        ("udp_gso_gro", lambda: ref_udp_gso(1.5 if q else 3.0)),
        ("quic_engine", lambda: ref_engine(ctx, (256 if q else 1024) * MIB)),
        ("aes_128_gcm_1200", lambda: ref_aes(venv_py)),
    ):
        try:
            out[name] = fn()
            log(f"reference {name}: {out[name]['gbps']:.2f} Gbit/s")
        except Exception as e:
            out[name] = {"error": str(e)[:400]}
            log(f"reference {name}: FAILED: {e}")
    return out


# ---------------------------------------------------------------------------------------------
# Summary, table, charts


def summarize(scs: list[Scenario], samples: list[dict]) -> list[dict]:
    rows = []
    for sc in scs:
        row = {"scenario": sc.key, "label": sc.label, "group": sc.group, "kind": sc.kind}
        for impl in IMPLS:
            mine = [s for s in samples if s["scenario"] == sc.key and s["impl"] == impl]
            ok = [s for s in mine if s["ok"]]
            rates = [s["rate"] for s in ok if s.get("rate") is not None]
            row[impl] = {
                "samples": len(mine), "ok": len(ok),
                "errors": [s["error"] for s in mine if not s["ok"]],
                "rate": med(rates),
                "rate_min": min(rates) if rates else None,
                "rate_max": max(rates) if rates else None,
                "p50_us": med([s.get("p50_us") for s in ok]),
                "p99_us": med([s.get("p99_us") for s in ok]),
                "cpu_per_gib": med([s.get("cpu_per_gib") for s in ok]),
                "cpu_per_1k": med([s.get("cpu_per_1k") for s in ok]),
                "cpu_per_gib_all": [s.get("cpu_per_gib") for s in ok],
                "peak_rss_mib": med([s.get("server_peak_rss_kib") and
                                     s["server_peak_rss_kib"] / 1024 for s in ok]),
                "udp_loss": med([s.get("udp_loss") for s in ok]),
            }
        # Paired per-round ratios quelay / sing-box.
        pairs: dict[str, list[float]] = {"rate": [], "cpu": [], "rss": [], "p99": []}
        rounds = sorted({s["round"] for s in samples if s["scenario"] == sc.key})
        for r in rounds:
            a = next((s for s in samples if s["scenario"] == sc.key and s["round"] == r
                      and s["impl"] == "quelay" and s["ok"]), None)
            b = next((s for s in samples if s["scenario"] == sc.key and s["round"] == r
                      and s["impl"] == "sing-box" and s["ok"]), None)
            if not (a and b):
                continue
            cpu_key = "cpu_per_gib" if sc.group == "bulk" else "cpu_per_1k"
            for k, ka in (("rate", "rate"), ("cpu", cpu_key), ("rss", "server_peak_rss_kib"),
                          ("p99", "p99_us")):
                if a.get(ka) and b.get(ka):
                    pairs[k].append(a[ka] / b[ka])
        row["ratio"] = {k: med(v) for k, v in pairs.items()}
        rows.append(row)
    return rows


def fmt(x, nd=2):
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{nd}f}"


def ratio(x):
    return "–" if x is None else f"{x:.2f}×"


def table(rows: list[dict]) -> str:
    unit = {"bulk": "Gbit/s", "rr": "req/s", "connect": "conn/s", "udp": "pkt/s"}
    out = ["| scenario | unit | quelay | sing-box | quelay/sing-box "
           "| p50 / p99 µs, quelay | p50 / p99 µs, sing-box "
           "| server CPU-s per GiB or per 1000 req, quelay | sing-box | CPU ratio "
           "| peak RSS MiB, quelay | sing-box |",
           "|" + "---|" * 12]
    for r in rows:
        cells = []
        for impl in IMPLS:
            c = r[impl]
            if c["samples"] == 0:
                cells.append(("not run",) * 4)
                continue
            if c["ok"] == 0:
                cells.append((f"FAIL 0/{c['samples']}",) + ("FAIL",) * 3)
                continue
            bad = "" if c["ok"] == c["samples"] else f" ({c['ok']}/{c['samples']} ok)"
            rate = fmt(c["rate"]) + bad
            if r["group"] == "udp" and c["udp_loss"] is not None:
                rate += f", loss {c['udp_loss'] * 100:.2f}%"
            lat = ("–" if c["p50_us"] is None
                   else f"{fmt(c['p50_us'], 0)} / {fmt(c['p99_us'], 0)}")
            cpu = fmt(c["cpu_per_gib"] if r["group"] == "bulk" else c["cpu_per_1k"], 3)
            cells.append((rate, lat, cpu, fmt(c["peak_rss_mib"], 1)))
        q, s = cells
        rt = r["ratio"]
        cpu_unit = "/GiB" if r["group"] == "bulk" else "/1k req"
        out.append(f"| {r['label']} | {unit[r['group']]} | {q[0]} | {s[0]} | "
                   f"**{ratio(rt['rate'])}** | {q[1]} | {s[1]} | {q[2]} {cpu_unit} | {s[2]} | "
                   f"{ratio(rt['cpu'])} | {q[3]} | {s[3]} |")
    errs = [(r["label"], impl, e) for r in rows for impl in IMPLS for e in r[impl]["errors"]]
    if errs:
        out += ["", "Failed samples:"]
        out += [f"- {lab}, {impl}: {e}" for lab, impl, e in errs]
    return "\n".join(out)


def refs_table(refs: dict) -> str:
    names = {"tcp_loopback": "TCP loopback, direct", "udp_gso_gro": "UDP with GSO/GRO, raw",
             "quic_engine": "quelay QUIC engine alone (no relay)",
             "aes_128_gcm_1200": "AES-128-GCM, 1200-byte records, one core"}
    out = ["| reference (same machine) | Gbit/s | how |", "|---|---|---|"]
    for k, name in names.items():
        r = refs.get(k)
        if r is None:
            continue
        if "error" in r:
            out.append(f"| {name} | FAIL | {r['error'][:200]} |")
        else:
            out.append(f"| {name} | {r['gbps']:.2f} | {r['how']} |")
    return "\n".join(out)


def plot(json_path: Path, ext: str = "svg") -> list[Path]:
    """SVG charts from a result JSON (runs in the venv: matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "quelay"  # stable ids: diffs show data changes
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt

    data = json.loads(json_path.read_text())
    rows = data["summary"]
    stem = json_path.with_suffix("")
    charts = [
        ("goodput", "Goodput, Gbit/s (median, min–max)", lambda r: r["group"] == "bulk",
         "rate", "rate_min", "rate_max"),
        ("rps", "Requests/s (rr), connections/s, echoed UDP packets/s",
         lambda r: r["group"] in ("rr", "connect", "udp"), "rate", "rate_min", "rate_max"),
        ("cpu", "Server CPU-seconds per GiB relayed (lower is better)",
         lambda r: r["group"] == "bulk", "cpu_per_gib", None, None),
    ]
    colors = {"quelay": "#1f77b4", "sing-box": "#ff7f0e"}
    written = []
    for name, title, pick, key, lo, hi in charts:
        sel = [r for r in rows if pick(r)]
        if not sel:
            continue
        fig, ax = plt.subplots(figsize=(10, 0.55 * len(sel) + 1.6))
        h = 0.38
        for i, impl in enumerate(IMPLS):
            ys = [j + (i - 0.5) * h for j in range(len(sel))]
            vals = [r[impl][key] or 0 for r in sel]
            err = None
            if lo:
                err = [[max(0, (r[impl][key] or 0) - (r[impl][lo] or r[impl][key] or 0))
                        for r in sel],
                       [max(0, (r[impl][hi] or r[impl][key] or 0) - (r[impl][key] or 0))
                        for r in sel]]
            ax.barh(ys, vals, height=h, xerr=err, color=colors[impl], label=impl,
                    error_kw={"elinewidth": 0.8, "capsize": 2})
            for j, (y, v, r) in enumerate(zip(ys, vals, sel)):
                c = r[impl]
                txt = ("FAIL" if c["samples"] and not c["ok"] else
                       "" if not c["samples"] else (f"{v:,.2f}" if v < 100 else f"{v:,.0f}"))
                x = v + (err[1][j] if err else 0)
                ax.text(x, y, "  " + txt, va="center", fontsize=7)
        ax.set_yticks(range(len(sel)), [r["label"] for r in sel], fontsize=8)
        ax.invert_yaxis()
        if name == "rps":
            ax.set_xscale("log")
            pos = [r[impl][k] for r in sel for impl in IMPLS for k in (key, lo)
                   if r[impl][k]]
            if pos:
                ax.set_xlim(left=10 ** math.floor(math.log10(min(pos))))
        ax.margins(x=0.12)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="x", alpha=0.3)
        fig.text(0.01, 0.005, f"{data['started']} · {data['machine']['nproc']} cores · "
                 f"rounds {data['options']['rounds']} · bench/compare.py", fontsize=6,
                 color="gray")
        fig.tight_layout()
        out = Path(f"{stem}-{name}.{ext}")
        fig.savefig(out, metadata={"Date": None})
        plt.close(fig)
        written.append(out)
    return written


# ---------------------------------------------------------------------------------------------
# Helper subcommands (run as child processes, each with its own timeout)


def socks5_connect(s: socket.socket, target: tuple[str, int]) -> None:
    s.sendall(b"\x05\x01\x00")
    if recv_exact(s, 2) != b"\x05\x00":
        raise RuntimeError("SOCKS5: no-auth method refused")
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(target[0]) + struct.pack(">H", target[1]))
    rep = recv_exact(s, 4)
    if rep[1] != 0:
        raise RuntimeError(f"SOCKS5: CONNECT failed, reply {rep[1]}")
    alen = {1: 4, 4: 16}.get(rep[3])
    recv_exact(s, (alen if alen else recv_exact(s, 1)[0]) + 2)


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            raise RuntimeError(f"connection closed after {len(buf)} of {n} bytes")
        buf += b
    return bytes(buf)


def cmd_socksload(a) -> int:
    """N TCP connections (via SOCKS5 if --socks) to the bench target; 'd': read --bytes each."""
    th, ph = a.target.rsplit(":", 1)
    target = (th, int(ph))
    errors: list[str] = []
    got = [0] * a.connections
    deadline = time.monotonic() + a.timeout

    def one(i: int) -> None:
        try:
            with socket.socket() as s:
                s.settimeout(max(1.0, deadline - time.monotonic()))
                if a.socks:
                    h, p = a.socks.rsplit(":", 1)
                    s.connect((h, int(p)))
                    socks5_connect(s, target)
                else:
                    s.connect(target)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(a.mode.encode() + struct.pack(">Q", a.bytes))
                buf = bytearray(1 << 20)
                mv = memoryview(buf)
                n = 0
                while n < a.bytes:
                    k = s.recv_into(mv, min(len(buf), a.bytes - n))
                    if not k:
                        raise RuntimeError(f"EOF after {n} of {a.bytes} bytes")
                    n += k
                    got[i] = n
        except Exception as e:
            errors.append(f"connection {i}: {e}")

    t0 = time.perf_counter()
    ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(a.connections)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(max(0.0, deadline - time.monotonic()))
    secs = time.perf_counter() - t0
    if any(t.is_alive() for t in ts):
        errors.append(f"timed out after {a.timeout} s")
    total = sum(got)
    print(json.dumps({"scenario": "socks-download", "connections": a.connections,
                      "bytes": total, "secs": secs, "goodput_bps": total * 8 / secs,
                      "errors": len(errors), "error_messages": errors[:5],
                      "partial": bool(errors)}), flush=True)
    return 1 if errors else 0


SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
SEG = 1200


def cmd_udptx(a) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((HOST, a.port))
    nseg = 65000 // SEG
    payload = b"\0" * (SEG * nseg)
    cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("H", SEG))]
    gso = True
    try:
        s.sendmsg([payload], cmsg)
    except OSError:
        gso = False
    sent = 0
    t0 = time.perf_counter()
    end = t0 + a.secs
    while time.perf_counter() < end:
        for _ in range(64):
            try:
                if gso:
                    sent += s.sendmsg([payload], cmsg)
                else:
                    sent += s.send(payload[:SEG])
            except (ConnectionRefusedError, BlockingIOError):
                pass
    secs = time.perf_counter() - t0
    print(json.dumps({"bytes": sent, "secs": secs, "gso": gso}), flush=True)
    return 0


def cmd_udprx(a) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gro = True
    try:
        s.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        gro = False
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.bind((HOST, a.port))
    s.settimeout(0.2)
    buf = bytearray(1 << 16)
    n = 0
    end = time.monotonic() + a.secs
    while time.monotonic() < end:
        try:
            n += s.recv_into(buf)
        except socket.timeout:
            continue
    print(json.dumps({"bytes": n, "gro": gro}), flush=True)
    return 0


def cmd_pytarget(a) -> int:
    """A slow stand-in for `quelay-bench target` (TCP d/u/e/r + UDP echo), to test the
    harness itself (--target-impl python). Not used for the published figures."""
    h, p = a.listen.rsplit(":", 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((h, int(p)))
    srv.listen(4096)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((h, int(p)))

    def udp_echo():
        while True:
            d, peer = u.recvfrom(65535)
            u.sendto(d, peer)

    def serve(c: socket.socket):
        try:
            with c:
                hdr = recv_exact(c, 9)
                mode, n = chr(hdr[0]), struct.unpack(">Q", hdr[1:])[0]
                if mode == "d":
                    chunk = b"\0" * (1 << 20)
                    while n > 0:
                        k = c.send(chunk[:min(n, len(chunk))])
                        n -= k
                elif mode in "ue":
                    while n > 0:
                        d = c.recv(min(n, 1 << 20))
                        if not d:
                            return
                        n -= len(d)
                        if mode == "e":
                            c.sendall(d)
                    if mode == "u":
                        c.sendall(b"\x01")
                elif mode == "r":
                    while True:
                        c.sendall(b"\0" * n if n else b"")
                        d = recv_exact(c, n) if n else b""
                        if not d:
                            return
        except Exception:
            pass

    threading.Thread(target=udp_echo, daemon=True).start()
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


# ---------------------------------------------------------------------------------------------


def versions(ctx: Ctx) -> dict:
    st = ctx.quelay.stat()
    out = {"quelay_bin": str(ctx.quelay), "quelay_bin_mtime":
           dt.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds")}
    for name, cmd in (("quelay", [ctx.quelay, "--version"]), ("sing-box", [ctx.singbox,
                                                                             "version"])):
        try:
            r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                               timeout=10)
            out[name] = (r.stdout.strip().splitlines() or ["?"])[0]
        except Exception as e:
            out[name] = f"? ({e})"
    return out


def write_report(out_dir: Path, stem: str, data: dict, rows: list[dict], venv_py, charts_ok):
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / f"{stem}.json"
    jpath.write_text(json.dumps(data, indent=1) + "\n")
    svgs: list[str] = []
    chart_err = None
    if charts_ok and venv_py is not None:
        try:
            r = subprocess.run([str(venv_py), __file__, "_plot", str(jpath)],
                               capture_output=True, text=True, timeout=180)
            if r.returncode != 0:
                chart_err = r.stderr.strip()[-400:]
            else:
                svgs = [l for l in r.stdout.split() if l.endswith(".svg")]
        except subprocess.TimeoutExpired:
            chart_err = "chart rendering timed out after 180 s"
    m = data["machine"]
    md = [
        f"# quelay vs sing-box, Hysteria2 servers on loopback, {data['started']}",
        "",
        f"- command: `{data['command']}`",
        f"- machine: {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}, load average "
        f"{' '.join(m['loadavg_start'])} at start, {' '.join(m.get('loadavg_end', []))} at "
        f"end; compare.py at {m['commit']}; quelay binary {data['versions']['quelay_bin']} "
        f"(built {data['versions']['quelay_bin_mtime']}); {data['versions'].get('sing-box')}",
        f"- {data['options']['rounds']} round(s), servers interleaved, medians; ratio = "
        "median of per-round quelay/sing-box pairs (rate: >1 is faster; CPU: <1 is cheaper); "
        f"run time {data['duration_secs'] / 60:.1f} min"
        + (" (INTERRUPTED)" if data["interrupted"] else "")
        + (" (STOPPED at --max-minutes)" if data.get("deadline_hit") else ""),
        "- load: `quelay-bench hy2` (one process per sample) for both servers; the "
        "\"sing-box client\" rows go through a sing-box 1.14.4 Hysteria2 client (SOCKS5) with "
        "a Python download load. Server CPU = /proc utime+stime over the load run; peak RSS = "
        "VmHWM of a server started fresh for each sample.",
        "",
        table(rows),
        "",
    ]
    if data["references"]:
        md += [refs_table(data["references"]), ""]
    if svgs:
        md += ["Charts: " + ", ".join(f"`{Path(s).name}`" for s in svgs), ""]
    elif chart_err:
        md += [f"Charts: not rendered ({chart_err})", ""]
    mpath = out_dir / f"{stem}.md"
    mpath.write_text("\n".join(md))
    return mpath, jpath, svgs, "\n".join(md)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true",
                    help="128 MiB bulk, 64 MiB via the sing-box client, 2 s runs, 1 round")
    ap.add_argument("--bytes", type=parse_size, default=None,
                    help="total bytes of each bulk run of `bench hy2` (default 512M)")
    ap.add_argument("--sb-bytes", type=parse_size, default=None,
                    help="total bytes of each sing-box-client download (default 256M)")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds of each rr/connect/udp run (default 5)")
    ap.add_argument("--only", action="append", default=[], metavar="SUBSTRING",
                    help="keep scenarios whose key contains SUBSTRING (repeatable); keys: "
                         "bulk-{down,up}-{1x1,8x4}, rr-{100,1000,10000}, connect, "
                         "udp-{5k,20k}, sb-down-{1,4}")
    ap.add_argument("--quelay-bin", help="use this quelay binary; no cargo build")
    ap.add_argument("--quelay-bench-bin",
                    help="use this quelay-bench binary (default: the one beside --quelay-bin, "
                         "else built with quelay)")
    ap.add_argument("--target-impl", choices=("quelay", "python"), default="quelay",
                    help="the bench target: `quelay-bench target` (default) or a slow Python "
                         "stand-in, to test this script")
    ap.add_argument("--quelay-max-streams", type=int, default=0,
                    help="quelay's quic.maxIncomingStreams (default: its default, 1024, as the "
                         "official server; sing-box grants 2^60)")
    ap.add_argument("--no-refs", action="store_true", help="skip the reference measurements")
    ap.add_argument("--no-charts", action="store_true", help="no venv, no SVG charts")
    ap.add_argument("--max-minutes", type=float, default=14.0,
                    help="stop starting samples after this many minutes and report (14)")
    ap.add_argument("--out", default=str(REPO / "bench/results"), help="output directory")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    a = ap.parse_args()
    if a.rounds is None:
        a.rounds = 1 if a.quick else 3
    QUELAY_MAX_STREAMS[0] = a.quelay_max_streams

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    t_start = time.monotonic()
    started = dt.datetime.now()
    scs = build_scenarios(a)
    if not scs:
        log("compare.py: no scenario matches --only")
        return 2
    try:
        singbox = install_singbox()
        need = [["hy2", "--help"]] if any(s.kind == "hy2" for s in scs) else []
        if a.target_impl == "quelay":
            need.append(["target", "--help"])
        if not a.no_refs:
            need += [["echo", "--help"], ["quic", "--help"]]
        quelay, bench = build_quelay(a.quelay_bin, need, a.quelay_bench_bin)
        venv_py = None if a.no_charts else ensure_venv()
    except SetupError as e:
        log(f"compare.py: setup failed: {e}")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="quelay-compare-"))
    try:
        cert, key = make_cert(tmp, venv_py)
    except SetupError as e:
        log(f"compare.py: setup failed: {e}")
        return 2
    ctx = Ctx(quelay=quelay, bench=bench, singbox=singbox, cert=cert, key=key, tmp=tmp,
              target_impl=a.target_impl)
    mach = machine()
    mach["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
    vers = versions(ctx)
    log(f"machine: {mach['nproc']} cores, kernel {mach['kernel']}, {mach['cpu']}, load "
        f"{' '.join(mach['loadavg_start'])}; {vers}")
    samples: list[dict] = []
    refs: dict = {}
    interrupted = deadline_hit = False
    start_fail = {impl: 0 for impl in IMPLS}
    start_err = {impl: "" for impl in IMPLS}
    try:
        try:
            ensure_target(ctx)
        except RuntimeError as e:
            log(f"compare.py: the bench target does not start: {e}")
            raise
        if not a.no_refs:
            refs = references(ctx, a, venv_py)
        for r in range(a.rounds):
            for i, sc in enumerate(scs):
                order = IMPLS if (r + i) % 2 == 0 else IMPLS[::-1]
                for impl in order:
                    if time.monotonic() - t_start > a.max_minutes * 60:
                        deadline_hit = True
                        raise TimeoutError
                    if start_fail[impl] >= 2:
                        s = {"scenario": sc.key, "impl": impl, "ok": False,
                             "error": f"skipped: the {impl} server failed to start twice "
                                      f"({start_err[impl][:300]})"}
                    else:
                        s = run_sample(sc, impl, ctx)
                        if s.get("start_failed"):
                            start_fail[impl] += 1
                            start_err[impl] = s["error"]
                        elif s["ok"]:
                            start_fail[impl] = 0
                    s["round"] = r
                    samples.append(s)
                    if s["ok"]:
                        extra = (f"{s['gbps']:.2f} Gbit/s, {s['cpu_per_gib']:.2f} CPU-s/GiB"
                                 if sc.group == "bulk" else
                                 f"{s['rate']:,.0f}/s, p99 {s.get('p99_us')} µs, "
                                 f"{s['cpu_per_1k']:.3f} CPU-s/1k")
                        msg = f"{extra}, peak RSS {(s['server_peak_rss_kib'] or 0) / 1024:.0f} MiB"
                    else:
                        msg = f"FAILED: {s['error']}"
                    log(f"[round {r + 1}/{a.rounds}] {sc.key} {impl}: {msg}")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; reporting what was measured")
    except TimeoutError:
        log(f"--max-minutes {a.max_minutes:g} reached; reporting what was measured")
    except RuntimeError:
        pass
    finally:
        kill_all()
    rows = summarize(scs, samples)
    mach["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    cmdline = "python3 bench/compare.py " + " ".join(sys.argv[1:])
    data = {
        "command": cmdline.strip(),
        "started": started.isoformat(timespec="seconds"),
        "duration_secs": time.monotonic() - t_start,
        "machine": mach,
        "versions": vers,
        "options": {k: v for k, v in vars(a).items()},
        "interrupted": interrupted,
        "deadline_hit": deadline_hit,
        "server_configs": {
            "quelay": quelay_yaml(0, Path("cert.pem"), Path("key.pem")),
            "sing-box": singbox_server_json(0, Path("cert.pem"), Path("key.pem")),
            "sing-box client": singbox_client_json(0, 0),
        },
        "target": {"impl": a.target_impl, "restarts": ctx.target_restarts},
        "scenarios": [asdict(s) for s in scs],
        "references": refs,
        "summary": rows,
        "samples": samples,
    }
    stem = f"compare-{started:%Y-%m-%d-%H%M%S}" + (f"-{a.tag}" if a.tag else "")
    mpath, jpath, svgs, md = write_report(Path(a.out), stem, data, rows, venv_py,
                                          not a.no_charts)
    shutil.rmtree(tmp, ignore_errors=True)
    print(md)
    log(f"wrote {mpath}, {jpath.name}" + (f", {len(svgs)} SVG charts" if svgs else ""))
    failed = [s for s in samples if not s["ok"]]
    if interrupted:
        return 130
    if failed or not samples or deadline_hit:
        log(f"compare.py: {len(failed)} of {len(samples)} samples FAILED"
            + (" (time limit hit)" if deadline_hit else "") + "; see the report")
        return 1
    return 0


def sub_main(argv: list[str]) -> int:
    cmd = argv[0]
    ap = argparse.ArgumentParser(prog=f"compare.py {cmd}")
    if cmd == "_socksload":
        ap.add_argument("--socks")
        ap.add_argument("--target", required=True)
        ap.add_argument("--mode", default="d", choices=("d",))
        ap.add_argument("--connections", type=int, default=1)
        ap.add_argument("--bytes", type=int, required=True)
        ap.add_argument("--timeout", type=float, default=60)
        return cmd_socksload(ap.parse_args(argv[1:]))
    if cmd in ("_udptx", "_udprx"):
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--secs", type=float, required=True)
        a = ap.parse_args(argv[1:])
        return cmd_udptx(a) if cmd == "_udptx" else cmd_udprx(a)
    if cmd == "_pytarget":
        ap.add_argument("--listen", required=True)
        return cmd_pytarget(ap.parse_args(argv[1:]))
    if cmd == "_plot":
        ap.add_argument("json")
        for p in plot(Path(ap.parse_args(argv[1:]).json)):
            print(p)
        return 0
    raise SystemExit(f"unknown helper {cmd}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        sys.exit(sub_main(sys.argv[1:]))
    try:
        sys.exit(main())
    finally:
        kill_all()
