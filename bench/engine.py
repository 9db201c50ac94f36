#!/usr/bin/env python3
"""Engine benchmark: quelay's QUIC engine against a plain quinn (tokio) pair, on loopback.

Every sample starts a fresh server process on 127.0.0.1 (free port), waits for its
"listening on" line, runs one client process to completion, then kills the server.
Configurations are interleaved within each round (the order rotates by one each round), so
slow drift on a shared, noisy machine hits every configuration alike. Figures are medians
over the rounds; ratios to quinn are medians of per-round paired ratios.

Measured, identically for both implementations:
  wall        client process spawn -> client exit (time.perf_counter), so process start,
              handshakes and connection close count for both sides alike;
  goodput     payload bytes of the measured direction (from the client's JSON, checked
              against the expected count) * 8 / wall;
  client CPU  ru_utime + ru_stime of the client process, from os.wait4();
  server CPU  delta of utime + stime (/proc/PID/stat, all threads) from just before the
              client is spawned to just after it exits.
The client's own JSON `gbps` is kept as "self-reported" goodput (quelay: from worker start,
so it includes handshakes; quinn_pair: after handshakes only).

Python 3.11 stdlib only. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The raw QUIC echo server and load client (`echo`, `quic`) of the quelay-bench crate.
QUELAY_BENCH = REPO / "target/release/quelay-bench"
QUINN_PAIR = REPO / "target/release/examples/quinn_pair"
GIB = 1 << 30
MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

# Live children, killed on any exit path.
LIVE: dict[int, subprocess.Popen] = {}


# ---------------------------------------------------------------------------------------------
# Configurations


@dataclass
class Config:
    name: str  # unique row label
    impl: str  # "quelay" or "quinn"
    mode: str  # upload | download | echo
    group: str  # "bulk" or "many"; the baseline is the quinn row of the same group and mode
    bytes_per_stream: int
    connections: int = 1
    streams: int = 1
    server_args: list[str] = field(default_factory=list)
    client_args: list[str] = field(default_factory=list)
    io: str | None = None  # expected driver for quelay: "io_uring" or "epoll"
    server_cpus: list[int] | None = None  # sched_setaffinity for the server process
    client_cpus: list[int] | None = None
    baseline: bool = False

    @property
    def total_bytes(self) -> int:
        return self.bytes_per_stream * self.connections * self.streams


def pin_flags(pin: str) -> list[str]:
    # quelay pins worker i to the i-th CPU of its affinity mask unless --no-pin.
    return ["--no-pin"] if pin == "none" else []


def pin_cpus(pin: str, single_worker: bool) -> tuple[list[int] | None, list[int] | None]:
    """'split' confines the server to CPU 0 and the client to CPU 1 (single-worker rows)."""
    if pin == "split" and single_worker:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            return [cpus[0]], [cpus[1]]
    return None, None


def quelay_bulk(mode: str, n: int, io: str, gso: bool, pin: str, tag: str = "") -> Config:
    off = [] if gso else ["--no-gso", "--no-gro"]
    eng = ["--io", io, "--workers", "1", *off, *pin_flags(pin)]
    s_cpus, c_cpus = pin_cpus(pin, True)
    label = f"quelay {'io_uring' if io == 'uring' else 'epoll'} GSO/GRO {'on' if gso else 'off'}"
    return Config(
        name=f"{label}{tag} {mode}",
        impl="quelay",
        mode=mode,
        group="bulk",
        bytes_per_stream=n,
        server_args=eng,
        client_args=eng,
        io="io_uring" if io == "uring" else "epoll",
        server_cpus=s_cpus,
        client_cpus=c_cpus,
    )


def quinn_bulk(mode: str, n: int, pin: str, tag: str = "", baseline: bool = True) -> Config:
    s_cpus, c_cpus = pin_cpus(pin, True)
    return Config(
        name=f"quinn pair (tokio, 1 thread){tag} {mode}",
        impl="quinn",
        mode=mode,
        group="bulk",
        bytes_per_stream=n,
        server_args=["--threads", "1"],
        client_args=["--threads", "1"],
        server_cpus=s_cpus,
        client_cpus=c_cpus,
        baseline=baseline,
    )


def build_configs(args) -> list[Config]:
    n = args.bytes
    pin = args.pin
    cfgs: list[Config] = []
    for mode in ("upload", "download"):
        cfgs += [
            quelay_bulk(mode, n, "uring", True, pin),
            quelay_bulk(mode, n, "uring", False, pin),
            quelay_bulk(mode, n, "epoll", True, pin),
            quelay_bulk(mode, n, "epoll", False, pin),
            quinn_bulk(mode, n, pin),
        ]
        if args.pin_trial:
            # The other pinning choices, for the uring GSO row and the quinn pair.
            for other in ("none", "both", "split"):
                if other == pin:
                    continue
                tag = f" [pin={other}]"
                cfgs.append(quelay_bulk(mode, n, "uring", True, other, tag))
                if other == "split":  # quinn has no pinning of its own; only 'split' differs
                    cfgs.append(quinn_bulk(mode, n, other, tag, baseline=False))
    e = args.echo_bytes
    cfgs += [
        Config(
            name=f"quelay io_uring 2 workers, echo 64x16x{e // 1024}KiB",
            impl="quelay",
            mode="echo",
            group="many",
            bytes_per_stream=e,
            connections=64,
            streams=16,
            server_args=["--io", "uring", "--workers", "2", *pin_flags(pin)],
            client_args=["--io", "uring", "--workers", "2", *pin_flags(pin)],
            io="io_uring",
        ),
        Config(
            name=f"quinn pair (tokio, 2 threads), echo 64x16x{e // 1024}KiB",
            impl="quinn",
            mode="echo",
            group="many",
            bytes_per_stream=e,
            connections=64,
            streams=16,
            server_args=["--threads", "2"],
            client_args=["--threads", "2"],
            baseline=True,
        ),
    ]
    if args.only:
        cfgs = [c for c in cfgs if any(s.lower() in c.name.lower() for s in args.only)]
    return cfgs


def server_cmd(c: Config, addr: str) -> list[str]:
    if c.impl == "quelay":
        return [str(QUELAY_BENCH), "echo", "--listen", addr, *c.server_args]
    return [str(QUINN_PAIR), "server", "--listen", addr, *c.server_args]


def client_cmd(c: Config, addr: str, timeout: float) -> list[str]:
    common = [
        "--server", addr,
        "--mode", c.mode,
        "--bytes", str(c.bytes_per_stream),
        "--connections", str(c.connections),
        "--streams", str(c.streams),
    ]
    if c.impl == "quelay":
        return [str(QUELAY_BENCH), "quic", *common, *c.client_args,
                "--timeout", str(int(timeout) + 1), "--json"]
    return [str(QUINN_PAIR), "client", *common, *c.client_args]


# ---------------------------------------------------------------------------------------------
# Processes


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """utime + stime of the whole thread group, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int) -> dict[str, float]:
    """utime + stime per thread ("name/tid"), in seconds."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        name = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
        fields = data[data.rindex(b")") + 2:].split()
        out[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def udp_counters() -> dict[str, int]:
    """Udp: row of /proc/net/snmp (whole network namespace, so other traffic counts too)."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [l.split() for l in f if l.startswith("Udp:")]
        return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])}
    except (OSError, IndexError, ValueError):
        return {}


def spawn(cmd: list[str], out, err, cpus: list[int] | None) -> subprocess.Popen:
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                         preexec_fn=pre, cwd=REPO)
    LIVE[p.pid] = p
    return p


def kill(p: subprocess.Popen, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL; reaps. Only this child's pid."""
    try:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    except ProcessLookupError:
        pass
    finally:
        LIVE.pop(p.pid, None)


def kill_all() -> None:
    for p in list(LIVE.values()):
        kill(p, grace=1.0)


def wait4_timeout(p: subprocess.Popen, timeout: float):
    """Blocks until p exits or timeout; returns (status, rusage, timed_out). Kills on timeout."""
    timed_out = False
    try:
        fd = os.pidfd_open(p.pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            r, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        if not r:
            timed_out = True
            p.kill()
    else:  # no pidfd: a timer kills the child, wait4 blocks meanwhile
        def on_timeout():
            nonlocal timed_out
            timed_out = True
            try:
                p.kill()
            except ProcessLookupError:
                pass
        t = threading.Timer(timeout, on_timeout)
        t.start()
    _, status, ru = os.wait4(p.pid, 0)
    if fd is None:
        t.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    LIVE.pop(p.pid, None)
    return p.returncode, ru, timed_out


def tail(path: str, n: int = 400) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode(errors="replace").strip().replace("\n", " | ")
    except OSError:
        return ""


def start_server(c: Config, tmp: str, timeout: float = 10.0):
    """Starts the server on a free port; returns (popen, addr, stderr_path)."""
    last = ""
    for attempt in range(3):
        addr = f"{HOST}:{free_udp_port()}"
        out_path = os.path.join(tmp, f"server-{attempt}.out")
        err_path = os.path.join(tmp, f"server-{attempt}.err")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            p = spawn(server_cmd(c, addr), out, err, c.server_cpus)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(out_path, "rb") as f:
                if b"listening on" in f.read():
                    return p, addr, err_path
            if p.poll() is not None:
                break
            time.sleep(0.01)
        last = f"server did not start (exit {p.poll()}): {tail(err_path)}"
        kill(p)
    raise RuntimeError(last)


def run_sample(c: Config, timeout: float) -> dict:
    s = {"config": c.name, "ok": False, "error": None}
    with tempfile.TemporaryDirectory(prefix="quelay-bench-") as tmp:
        server = None
        try:
            server, addr, s_err = start_server(c, tmp)
            time.sleep(0.05)  # let the server settle (its start-up CPU is not counted anyway)
            out_path = os.path.join(tmp, "client.out")
            err_path = os.path.join(tmp, "client.err")
            cmd = client_cmd(c, addr, timeout)
            s["client_cmd"] = " ".join([Path(cmd[0]).name] + cmd[1:])
            s["server_cmd"] = " ".join([Path(server.args[0]).name] + server.args[1:])
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                udp0 = udp_counters()
                thr0 = thread_cpu(server.pid)
                srv0 = proc_cpu(server.pid)
                t0 = time.perf_counter()
                client = spawn(cmd, out, err, c.client_cpus)
                rc, ru, timed_out = wait4_timeout(client, timeout)
                wall = time.perf_counter() - t0
                srv1 = proc_cpu(server.pid) if server.poll() is None else None
                thr1 = thread_cpu(server.pid)
                udp1 = udp_counters()
            s.update(
                wall_secs=wall,
                client_cpu_secs=ru.ru_utime + ru.ru_stime,
                client_utime=ru.ru_utime,
                client_stime=ru.ru_stime,
                client_maxrss_kib=ru.ru_maxrss,
                client_nvcsw=ru.ru_nvcsw,
                client_nivcsw=ru.ru_nivcsw,
                server_cpu_secs=None if srv1 is None else srv1 - srv0,
                exit_code=rc,
                server_thread_cpu={k: round(v - thr0.get(k, 0.0), 3) for k, v in thr1.items()},
                udp_delta={k: udp1[k] - udp0[k] for k in udp1 if k in udp0},
            )
            with open(out_path, "rb") as f:
                lines = [l for l in f.read().decode(errors="replace").splitlines()
                         if l.startswith("{")]
            report = json.loads(lines[-1]) if lines else None
            s["client_json"] = report
            if timed_out:
                raise RuntimeError(f"client timed out after {timeout:g} s (killed)")
            if srv1 is None:
                raise RuntimeError(f"server died during the run: {tail(s_err)}")
            if rc != 0 or report is None:
                raise RuntimeError(f"client exit {rc}: {tail(err_path)}")
            if report.get("errors"):
                raise RuntimeError(f"client reported {report['errors']} error(s)")
            if report.get("bytes") != c.total_bytes:
                raise RuntimeError(f"client moved {report.get('bytes')} bytes, "
                                   f"expected {c.total_bytes}")
            if c.io and report.get("io") != c.io:
                raise RuntimeError(f"client ran {report.get('io')}, asked {c.io}")
            if c.io:
                with open(s_err, "rb") as f:
                    if f", {c.io} driver".encode() not in f.read():
                        raise RuntimeError(f"server did not report the {c.io} driver")
            gib = c.total_bytes / GIB
            s.update(
                ok=True,
                gbps_wall=c.total_bytes * 8 / wall / 1e9,
                gbps_self=report.get("gbps"),
                secs_self=report.get("secs"),
                client_cpu_self=report.get("cpu_secs"),
                server_cpu_per_gib=s["server_cpu_secs"] / gib,
                client_cpu_per_gib=s["client_cpu_secs"] / gib,
            )
            s["total_cpu_per_gib"] = s["server_cpu_per_gib"] + s["client_cpu_per_gib"]
        except Exception as e:  # a failed sample is recorded, never fatal
            s["error"] = str(e)[:600]
        finally:
            if server is not None:
                kill(server)
            for p in list(LIVE.values()):  # a client left behind by an exception
                if p is not server:
                    kill(p)
    return s


# ---------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        commit = "?"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": os.uname().release,
        "cpu": model,
        "commit": commit,
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def summarize(cfgs: list[Config], rounds: list[list[dict]]) -> list[dict]:
    by_name = {c.name: [r[c.name] for r in rounds if c.name in r] for c in cfgs}
    rows = []
    for c in cfgs:
        ok = [s for s in by_name[c.name] if s["ok"]]
        base = next((b for b in cfgs if b.baseline and b.group == c.group and b.mode == c.mode),
                    None)
        g_ratio, cpu_ratio = [], []
        if base is not None:
            # Paired per round: this configuration and the baseline from the same round.
            for r in rounds:
                a, b = r.get(c.name), r.get(base.name)
                if a and b and a["ok"] and b["ok"]:
                    g_ratio.append(a["gbps_wall"] / b["gbps_wall"])
                    cpu_ratio.append(a["total_cpu_per_gib"] / b["total_cpu_per_gib"])
        gb = [s["gbps_wall"] for s in ok]
        rows.append({
            "config": c.name,
            "mode": c.mode,
            "group": c.group,
            "baseline": base.name if base else None,
            "samples": len(by_name[c.name]),
            "ok": len(ok),
            "errors": [s["error"] for s in by_name[c.name] if not s["ok"]],
            "gbps_wall": med(gb),
            "gbps_min": min(gb) if gb else None,
            "gbps_max": max(gb) if gb else None,
            "gbps_self": med([s["gbps_self"] for s in ok]),
            "wall_secs": med([s["wall_secs"] for s in ok]),
            "server_cpu_per_gib": med([s["server_cpu_per_gib"] for s in ok]),
            "client_cpu_per_gib": med([s["client_cpu_per_gib"] for s in ok]),
            "total_cpu_per_gib": med([s["total_cpu_per_gib"] for s in ok]),
            "udp_rcvbuf_errors": med([s.get("udp_delta", {}).get("RcvbufErrors") for s in ok]),
            "server_worker_cpu": [worker_split(s) for s in ok] if c.group == "many" else None,
            "gbps_ratio": med(g_ratio),
            "cpu_ratio": med(cpu_ratio),
        })
    return rows


def worker_split(s: dict) -> str:
    """Server CPU seconds per worker thread in one sample, e.g. "0.31/0.02"."""
    th = s.get("server_thread_cpu") or {}
    ws = sorted((k, v) for k, v in th.items()
                if k.startswith(("quelay-w", "tokio-rt-worker")))
    return "/".join(f"{v:.2f}" for _, v in ws) or "-"


def table(rows: list[dict]) -> str:
    head = ("| configuration | ok | goodput Gbit/s, wall (min–max) | self-reported Gbit/s "
            "| server CPU-s/GiB | client CPU-s/GiB | total CPU-s/GiB "
            "| goodput vs quinn | CPU/GiB vs quinn | UDP rcvbuf drops |")
    out = [head, "|" + "---|" * 10]
    for r in rows:
        okc = f"{r['ok']}/{r['samples']}"
        if r["samples"] == 0:
            out.append(f"| {r['config']} | 0/0 | not run |  |  |  |  |  |  |  |")
            continue
        if r["ok"] == 0:
            out.append(f"| {r['config']} | {okc} | n/a (error) | n/a (error) | n/a (error) "
                       f"| n/a (error) | n/a (error) | n/a | n/a | n/a |")
            continue
        is_base = r["baseline"] == r["config"]
        gr = "baseline" if is_base else ("n/a" if r["gbps_ratio"] is None
                                         else f"{r['gbps_ratio']:.2f}×")
        cr = "baseline" if is_base else ("n/a" if r["cpu_ratio"] is None
                                         else f"{r['cpu_ratio']:.2f}×")
        out.append(
            f"| {r['config']} | {okc} "
            f"| **{fmt(r['gbps_wall'])}** ({fmt(r['gbps_min'])}–{fmt(r['gbps_max'])}) "
            f"| {fmt(r['gbps_self'])} | {fmt(r['server_cpu_per_gib'])} "
            f"| {fmt(r['client_cpu_per_gib'])} | {fmt(r['total_cpu_per_gib'])} "
            f"| {gr} | {cr} | {fmt(r['udp_rcvbuf_errors'], 0)} |")
    splits = [r for r in rows if r.get("server_worker_cpu")]
    if splits:
        out.append("")
        out.append("Server CPU-s per worker thread, one entry per successful round:")
        for r in splits:
            out.append(f"- {r['config']}: {', '.join(r['server_worker_cpu'])}")
    errs = [(r["config"], e) for r in rows for e in r["errors"]]
    if errs:
        out.append("")
        out.append("Failed samples:")
        for name, e in errs:
            out.append(f"- {name}: {e}")
    return "\n".join(out)


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------------------------


def parse_size(s: str) -> int:
    s = s.strip()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    for suffix in ("kib", "mib", "gib", "k", "m", "g"):
        if s.lower().endswith(suffix):
            return int(float(s[: -len(suffix)]) * mult[suffix[0]])
    return int(s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    ap.add_argument("--bytes", type=parse_size, default=None,
                    help="bytes per bulk run, e.g. 1G, 256M (default 1 GiB)")
    ap.add_argument("--echo-bytes", type=parse_size, default=64 << 10,
                    help="bytes per stream of the 64x16 echo row (default 64 KiB)")
    ap.add_argument("--quick", action="store_true",
                    help="256 MiB, 1 round (explicit --bytes/--rounds still win)")
    ap.add_argument("--only", action="append", default=[], metavar="SUBSTRING",
                    help="keep configurations whose name contains SUBSTRING (case-insensitive,"
                         " repeatable; keep the quinn rows for ratios)")
    ap.add_argument("--pin", choices=("none", "both", "split"), default="none",
                    help="none: quelay --no-pin (default); both: quelay pins worker i to CPU i"
                         " on each side; split: server confined to CPU 0, client to CPU 1 "
                         "(both implementations, single-worker rows)")
    ap.add_argument("--pin-trial", action="store_true",
                    help="add the other pinning choices for the io_uring GSO and quinn rows")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per client run (default 30 + time at 0.2 Gbit/s)")
    ap.add_argument("--out-dir", default=str(REPO / "bench/results"))
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    ap.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = ap.parse_args()
    if args.bytes is None:
        args.bytes = 256 * MIB if args.quick else GIB
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3

    for b in (QUELAY_BENCH, QUINN_PAIR):
        if not b.exists():
            print(f"missing {b}; run: cargo build --release -p quelay-bench && "
                  "cargo build --release -p quelay --example quinn_pair", file=sys.stderr)
            return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    cfgs = build_configs(args)
    if not cfgs:
        print("no configuration matches --only", file=sys.stderr)
        return 2
    mach = machine()
    mline = f"machine: nproc {mach['nproc']}, kernel {mach['kernel']}, CPU {mach['cpu']}, " \
            f"quelay {mach['commit']}, load {' '.join(mach['loadavg_start'])}"
    print(mline, flush=True)
    started = dt.datetime.now()
    rounds: list[dict[str, dict]] = []
    interrupted = False
    try:
        for r in range(args.rounds):
            # Rotate the order each round so no configuration always runs first or last.
            k = r % len(cfgs)
            order = cfgs[k:] + cfgs[:k]
            results: dict[str, dict] = {}
            rounds.append(results)
            for c in order:
                timeout = args.timeout or (30 + c.total_bytes * 8 / 0.2e9)
                s = run_sample(c, timeout)
                s["round"] = r
                results[c.name] = s
                if s["ok"]:
                    msg = (f"{s['gbps_wall']:.2f} Gbit/s wall ({s['gbps_self']} self), "
                           f"server {s['server_cpu_secs']:.2f} s, "
                           f"client {s['client_cpu_secs']:.2f} s CPU")
                else:
                    msg = f"FAILED: {s['error']}"
                print(f"[round {r + 1}/{args.rounds}] {c.name}: {msg}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; reporting what was measured", file=sys.stderr)
    finally:
        kill_all()

    rows = summarize(cfgs, rounds)
    mach["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    cmdline = "python3 bench/engine.py " + " ".join(sys.argv[1:])
    md = "\n".join([
        f"# quelay engine benchmark, {started:%Y-%m-%d %H:%M}",
        "",
        f"- command: `{cmdline.strip()}`",
        f"- {mline}; load at end {' '.join(mach['loadavg_end'])}",
        f"- bulk rows: 1 connection × 1 stream × {human_bytes(args.bytes)}; "
        f"many row: echo 64 connections × 16 streams × {human_bytes(args.echo_bytes)}; "
        f"{len(rounds)} round(s), interleaved, medians"
        + (" (INTERRUPTED)" if interrupted else ""),
        f"- pinning: {args.pin}",
        "- goodput = payload bytes of the measured direction × 8 / wall time of the client "
        "process (spawn to exit, handshakes included); CPU-s/GiB = CPU seconds per GiB of "
        "that payload (server: /proc utime+stime delta over the client run; client: wait4 "
        "rusage); ratios = median of per-round paired ratios to the quinn row of the same "
        "mode (goodput: >1 is faster; CPU: <1 is cheaper, server + client summed); UDP rcvbuf "
        "drops = median RcvbufErrors delta of /proc/net/snmp over the client run (whole "
        "network namespace: other tenants' traffic counts too)",
        "",
        table(rows),
        "",
    ])
    print()
    print(md)
    if not args.no_save:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"engine-{started:%Y-%m-%d}" + (f"-{args.tag}" if args.tag else "")
        if (out_dir / f"{stem}.md").exists():
            stem += f"-{started:%H%M%S}"
        (out_dir / f"{stem}.md").write_text(md)
        raw = {
            "command": cmdline.strip(),
            "started": started.isoformat(timespec="seconds"),
            "machine": mach,
            "options": {k: v for k, v in vars(args).items()},
            "interrupted": interrupted,
            "configs": [asdict(c) | {"total_bytes": c.total_bytes} for c in cfgs],
            "summary": rows,
            "samples": [s for r in rounds for s in r.values()],
        }
        (out_dir / f"{stem}.json").write_text(json.dumps(raw, indent=1) + "\n")
        print(f"wrote {out_dir / (stem + '.md')} and {stem}.json", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_all()
