#!/usr/bin/env python3
"""Congestion control of a Hysteria2 server under a real quic-go client, on loopback.

    python3 bench/cc.py                                   # quelay, quelay:reno, singbox; 2 rounds
    python3 bench/cc.py --servers quelay,singbox --bytes 64M --rounds 1
    python3 bench/cc.py --servers quelay:reno,singbox --cpu-quota 30 --direction both
    python3 bench/cc.py --servers quelay,shoes,singbox --bytes 64M --rounds 1 --direction both

What it measures: how many UDP datagrams (and IP bytes) a server puts on the wire per MiB
of payload, and how fast, when the client is the sing-box (quic-go) Hysteria2 client.
Wire traffic is counted OUTSIDE the processes, by nftables on the output hook (table
`inet quelay_cc_bench`, chain `out`: `udp sport PORT` = server -> clients, `udp dport
PORT` = clients -> server, PORT being the server's UDP port; on loopback every packet
crosses the output hook once), read just before and just after the load. A figure near
1 MiB / datagram size (722 at 1452-byte QUIC datagrams, 874 at 1200) means full packets
and few retransmissions; more means small packets or retransmissions; the reverse
direction is mostly ACKs.

GSO: a GSO batch (one sendmsg with UDP_SEGMENT, up to 64 KB) crosses the output hook,
and the whole loopback path, as ONE skb; both quelay and quic-go use GSO on loopback, and
quelay's relay server has no switch to turn it off (its --no-gso applies to --echo only).
So each direction has, besides a named counter (skbs, IP bytes), a dynamic set keyed by
`meta length` with a counter per element: the histogram of skb lengths. A batch of
segments of S bytes of UDP payload (the last one possibly shorter) holds ceil(payload/S)
datagrams; S is inferred per direction and sample as the size in 1200..1452 (both
implementations' range) of which most batch payloads are exact multiples (the JSON keeps
S, the share of batches that fit it exactly, and the histogram). Wire bytes add one
IP+UDP header (28 B) per inferred datagram. "Receiver drops" = the `drops` column of
/proc/net/udp for the receiving sockets (clients' for down, the server's for up): datagrams
the kernel discarded because the receive buffer was full, which the sender must resend.

Servers (`--servers`, comma list): `quelay` = the quelay server with compare.py's config
(password auth, one self-signed certificate, 8 MiB / 20 MiB QUIC windows, BBR by default);
`quelay:X` = the same plus `congestion: {type: X}` (bbr, reno, cubic); `quelay@BINARY` or
`quelay:X@BINARY` = another quelay build (an earlier release, say) in the same interleaved
rounds; `singbox` = the sing-box 1.14.4 Hysteria2 server (quic-go, BBR) with compare.py's
config; `shoes` = the Hysteria2 server of shoes 0.3.2 (crates.io; Rust, quinn + tokio),
installed by scripts/get-shoes.sh into target/peers (cargo install, cached; the first
install compiles for several minutes), `shoes@BINARY` = another shoes build. shoes' config
(`shoes_yaml`, run as `shoes --no-reload server.yaml`, RUST_LOG=warn): the same password,
certificate and ALPN h3, direct outbound (`rules: allow-all-direct`), and a `global_limits`
entry with the same 8 MiB stream / 20 MiB connection receive windows, quinn's send window
(unacknowledged bytes in flight, a cap quic-go does not have) also 20 MiB, and 16 MiB UDP
socket buffers like quelay's (plain SO_RCVBUF/SO_SNDBUF, so capped by the kernel at twice
net.core.rmem_max / wmem_max; quelay forces them, quic-go forces 7 MiB as root); shoes'
defaults would be 256 KiB / 2 MiB / 2 MiB / 1 MiB. What shoes does not expose stays its
own: quinn's default congestion controller (CUBIC; no BBR, no Brutal, no Salamander),
initial MTU 1200 with MTU discovery, GSO on, initial RTT 100 ms, one SO_REUSEPORT socket
per worker thread (CPU count). Every sample starts a fresh server and
`--connections` fresh sing-box clients (one process and one SOCKS5 port each, each
carrying one TCP connection of `--bytes` payload); `quelay-bench target` (TCP mode `d`
download / `u` upload) runs once for the whole run. Download load: compare.py's
`_socksload`; upload load: this script's `_upload` (SOCKS5 CONNECT, header `u` + u64 BE
length, the bytes, half-close, then the target's u64 BE byte count). Servers are
interleaved per round (ABC, CBA, ...); figures are medians over rounds, ratios to singbox
(goodput, datagrams/MiB) medians of per-round ratios; when `shoes` is in the run, two more
columns give the ratios to shoes the same way (goodput, server CPU-s/GiB).

`--cpu-quota P` puts every sing-box CLIENT process (not the server) into the cgroup v1
cpu group /sys/fs/cgroup/cpu/quelay-cc-bench with cpu.cfs_quota_us = P * 1000 per
100 ms period, i.e. P % of one CPU shared by all clients: a slow client, whose ACKs come
late, which is where congestion controllers differ.

`--two-hosts` runs the server in a network namespace of its own on CPU 0, and cc.py, the
clients, the loads and the target in another on CPU 1, joined by a veth pair whose receive
queues are steered (RPS) to their own side's CPU (class TwoHosts). On loopback a receiver's
kernel work (GSO segmentation, socket enqueue, wake-up) runs inside the sender's system
call and is charged to the sender; here each side pays its own, as two machines would. The
table gains the server CPU's whole busy time per GiB ("server core", /proc/stat), which
also counts receive work done while the server slept. Wire counts are then taken in the
clients' namespace: s2c on the input hook, c2s on the output hook.

A quelay server also serves /metrics (`metrics.listen`, a free port of its own), read just
before and just after the load: its worker loops, blocking waits, and UDP datagrams and
batches both ways (ENGINE_COUNTERS), shown per MiB in a second table.

Per sample: payload bytes, seconds (the slowest load's own timing), goodput, skbs,
datagrams and bytes both ways, datagrams per MiB and wire bytes per payload byte in the
data direction (download: server -> client; upload: client -> server), receiver drops,
server CPU seconds (/proc, all threads) and per GiB, sing-box client CPU seconds, errors. A failed
sample is recorded with its error; the run goes on and exits 1. Outputs:
--out/cc-<UTC timestamp>.json (samples, summary, configs) and .md (the table).

Needs root (nftables, cgroups); installs nftables with apt-get when `nft` is missing,
sing-box with scripts/get-singbox.sh (as compare.py), shoes (only when a `shoes` spec is
given) with scripts/get-shoes.sh (needs cargo and crates.io). Uses target/release/quelay
and target/release/quelay-bench (the bench target) unless --quelay-bin / --quelay-bench-bin
(both copied at start, so that a concurrent cargo build cannot swap them mid-run).
Only 127.0.0.1 (or, with --two-hosts, the two namespaces). Python 3.11 standard library
only (plus nft, and ip and taskset for --two-hosts); imports
bench/compare.py.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # no bench/__pycache__ from importing compare.py
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"  # nor from the load processes
sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as cmp  # noqa: E402
from compare import (  # noqa: E402
    GIB, MIB, LIVE, Ctx, Proc, SetupError, kill, kill_all, log, med, parse_size,
    proc_cpu, tail, human_bytes,
)

REPO = cmp.REPO
NFT_TABLE = "quelay_cc_bench"
CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
CGROUP = CGROUP_ROOT / "quelay-cc-bench"
BASELINE = "singbox"  # every row's ratios (goodput, datagrams/MiB) are to this server's
SECOND = "shoes"  # and, when it is in the run, to this one's (goodput, server CPU-s/GiB)
PEERS_ROOT = REPO / "target/peers"  # scripts/get-shoes.sh's cargo --root: bin/shoes
SHOES_VERSION = "0.3.2"
# shoes' QUIC tunables (its `global_limits` entry; defaults 256 KiB / 2 MiB / 2 MiB / 1 MiB):
# compare.py's 8 MiB stream / 20 MiB connection receive windows, quinn's send window (its
# own cap on unacknowledged bytes in flight, which quic-go has not) as large as the
# connection window, and socket buffers as quelay's (16 MiB, shoes' maximum; plain
# SO_RCVBUF/SO_SNDBUF, so the kernel caps them at 2 x net.core.rmem_max / wmem_max).
SHOES_LIMITS = {"quic_stream_window": cmp.STREAM_WINDOW,
                "quic_receive_window": cmp.CONN_WINDOW,
                "quic_send_window": cmp.CONN_WINDOW, "quic_socket_buffer": 16 << 20}
BINS: dict[str, Path] = {}  # peer binaries installed for this run: {"shoes": path}
COUNTING = ("nftables table inet quelay_cc_bench, hook output (loopback: each skb once): "
            "named counters s2c (udp sport PORT) and c2s (udp dport PORT) count skbs and IP "
            "bytes; dynamic sets s2c_len/c2s_len count skbs per IP length, from which the "
            "datagrams inside GSO batches are inferred (segment size per direction = the "
            "size in 1200..1452 dividing most batch payloads); wire bytes add one IP+UDP "
            "header (28 B) per inferred datagram")


# ---------------------------------------------------------------------------------------------
# nftables


def run(cmd: list[str], timeout: float = 30, input: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    except FileNotFoundError as e:
        raise SetupError(f"{cmd[0]}: {e}") from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"timed out after {timeout:g} s: {' '.join(cmd)}") from None
    if check and r.returncode != 0:
        raise SetupError(f"{' '.join(cmd)}: exit {r.returncode}: "
                         f"{(r.stderr or r.stdout).strip()[-400:]}")
    return r


def ensure_nft() -> str:
    nft = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft")
                                       if os.access(p, os.X_OK)), None)
    if nft:
        return nft
    log("nftables: `nft` not found; apt-get install -y nftables")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    ok = False
    for pre in ([], [["apt-get", "update"]]):
        try:
            for c in pre:
                subprocess.run(c, capture_output=True, timeout=600, env=env)
            r = subprocess.run(["apt-get", "install", "-y", "nftables"], capture_output=True,
                               text=True, timeout=900, env=env)
            ok = r.returncode == 0
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f"nftables: {e}")
        if ok:
            break
    nft = shutil.which("nft") or ("/usr/sbin/nft" if os.access("/usr/sbin/nft", os.X_OK)
                                  else None)
    if not nft:
        raise SetupError("nftables: `nft` is missing and `apt-get install -y nftables` "
                         "failed; install nftables (and run as root)")
    return nft


class Nft:
    """The counters of one sample: created for a server port, deleted on any exit.

    Per direction (s2c = udp sport PORT, c2s = udp dport PORT), on the output hook: a named
    counter (packets = skbs, bytes = IP length) and a dynamic set keyed by `meta length`
    with a counter per element: the histogram of skb lengths, from which the datagrams
    inside GSO batches are inferred (see `datagrams`)."""

    def __init__(self, nft: str, split: bool = False):
        self.nft = nft
        # --two-hosts: cc.py runs in the clients' namespace, where the server's packets
        # arrive from the veth (input hook) and the clients' leave (output hook).
        self.split = split

    def delete(self) -> None:
        r = subprocess.run([self.nft, "list", "tables"], capture_output=True, text=True,
                           timeout=30)
        if f"table inet {NFT_TABLE}" in r.stdout.splitlines():
            run([self.nft, "delete", "table", "inet", NFT_TABLE])

    def create(self, port: int) -> None:
        self.delete()
        sets = "".join(f"  set {d}_len {{ typeof meta length; size 65535; flags dynamic; "
                       "counter; }\n" for d in DIRS)
        s2c = f"    udp sport {port} counter name \"s2c\" update @s2c_len {{ meta length }}\n"
        c2s = f"    udp dport {port} counter name \"c2s\" update @c2s_len {{ meta length }}\n"
        chains = (("  chain in {\n    type filter hook input priority 0; policy accept;\n"
                   + s2c + "  }\n" if self.split else "")
                  + "  chain out {\n    type filter hook output priority 0; policy accept;\n"
                  + ("" if self.split else s2c) + c2s + "  }\n")
        rules = (f"table inet {NFT_TABLE} {{\n"
                 "  counter s2c { }\n"
                 "  counter c2s { }\n" + sets + chains + "}\n")
        run([self.nft, "-f", "-"], input=rules)

    def read(self) -> dict[str, dict]:
        r = run([self.nft, "-j", "list", "table", "inet", NFT_TABLE])
        out: dict[str, dict] = {d: {"hist": {}} for d in DIRS}
        for obj in json.loads(r.stdout).get("nftables", []):
            c = obj.get("counter")
            if c and c.get("table") == NFT_TABLE and c.get("name") in DIRS:
                out[c["name"]].update(packets=int(c["packets"]), bytes=int(c["bytes"]))
            st = obj.get("set")
            if st and st.get("table") == NFT_TABLE and st.get("name", "")[:3] in DIRS:
                for e in st.get("elem") or []:
                    e = e.get("elem", e)
                    out[st["name"][:3]]["hist"][int(e["val"])] = int(e["counter"]["packets"])
        if any("packets" not in out[d] for d in DIRS):
            raise RuntimeError(f"nft: counters s2c/c2s not found in {r.stdout[:300]}")
        return out


DIRS = ("s2c", "c2s")
IP_UDP = 28  # IPv4 + UDP header bytes per datagram
MAX_DGRAM = 1452  # largest UDP payload of quelay (MTU_UPPER_BOUND) and quic-go
MIN_FULL = 1200  # QUIC's minimum datagram size: the smallest plausible GSO segment


def datagrams(hist: dict[int, int]) -> dict:
    """Wire datagrams from a histogram {skb IP length: count}. An skb is one datagram or one
    GSO batch: segments of gso_size S bytes of UDP payload, the last one possibly shorter,
    sharing one IP+UDP header in the skb, so it holds ceil(payload / S) datagrams. S is
    inferred per direction and sample: the size in [1200, 1452] of which the most batch
    payloads (skbs over 1452 bytes of UDP payload) are exact multiples (bulk batches are
    k full segments); 1452 (both implementations' maximum) when none is."""
    pay = {ln - IP_UDP: n for ln, n in hist.items() if n > 0}
    multi = {p: n for p, n in pay.items() if p > MAX_DGRAM}
    seg, exact = MAX_DGRAM, 0
    if multi:
        score, seg = max((sum(n for p, n in multi.items() if p % c == 0), c)
                         for c in range(MIN_FULL, MAX_DGRAM + 1))
        exact = score
        if not score:
            seg = MAX_DGRAM
    dg = sum(n * (1 if p <= seg else -(-p // seg)) for p, n in pay.items())
    skbs = sum(pay.values())
    return {"skbs": skbs, "datagrams": dg, "gso_batches": sum(n for p, n in pay.items()
                                                               if p > seg),
            "segment_size": seg if multi else None,
            "batches_exact_multiple": (exact / sum(multi.values())) if multi else None,
            "max_skb_bytes": max(hist) if hist else None}


def hist_delta(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    return {k: n - a.get(k, 0) for k, n in b.items() if n - a.get(k, 0) > 0}


def udp_socket_drops(port: int | None = None, inodes: set[str] | None = None,
                     net: str = "/proc/net") -> int:
    """Sum of the `drops` column of NET/udp{,6} (datagrams the kernel dropped at that
    socket: full receive buffer) over the sockets bound to `port` or with these inodes.
    NET is /proc/PID/net for a process in another network namespace."""
    total = 0
    want = None if port is None else f":{port:04X}"
    for table in (f"{net}/udp", f"{net}/udp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    c = line.split()
                    if len(c) < 13:
                        continue
                    if (want and c[1].endswith(want)) or (inodes and c[9] in inodes):
                        total += int(c[12])
        except OSError:
            pass
    return total


def socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if t.startswith("socket:["):
                out.add(t[8:-1])
    except OSError:
        pass
    return out


# ---------------------------------------------------------------------------------------------
# cgroup v1 cpu controller


class Cgroup:
    def __init__(self, percent: int):
        self.percent = percent
        self.made = False

    def setup(self) -> None:
        if not self.percent:
            return
        if not (CGROUP_ROOT / "cpu.cfs_quota_us").exists():
            raise SetupError(f"--cpu-quota needs the cgroup v1 cpu controller at {CGROUP_ROOT} "
                             f"(no {CGROUP_ROOT}/cpu.cfs_quota_us on this machine)")
        try:
            CGROUP.mkdir(exist_ok=True)
            self.made = True
            (CGROUP / "cpu.cfs_period_us").write_text("100000")
            (CGROUP / "cpu.cfs_quota_us").write_text(str(self.percent * 1000))
        except OSError as e:
            raise SetupError(f"cgroup {CGROUP}: {e} (needs root)") from None

    def add(self, pid: int) -> None:
        if self.percent:
            (CGROUP / "cgroup.procs").write_text(str(pid))

    def stat(self) -> dict[str, int]:
        """cpu.stat: nr_periods, nr_throttled, throttled_time (ns)."""
        if not self.made:
            return {}
        try:
            return {k: int(v) for k, v in (l.split() for l in
                                            (CGROUP / "cpu.stat").read_text().splitlines())}
        except (OSError, ValueError):
            return {}

    def remove(self) -> None:
        if not self.made:
            return
        try:  # anything left (our clients only) goes back to the root group first
            for pid in (CGROUP / "cgroup.procs").read_text().split():
                try:
                    (CGROUP_ROOT / "cgroup.procs").write_text(pid)
                except OSError:
                    pass
            CGROUP.rmdir()
            self.made = False
        except OSError as e:
            log(f"cgroup {CGROUP}: could not remove it: {e}")


# ---------------------------------------------------------------------------------------------
# --two-hosts: the server's side and the clients' side as two machines of one CPU each


class TwoHosts:
    """Two network namespaces joined by a veth pair, one for the server and one for
    everything else (cc.py itself, the sing-box clients, the loads, the bench target):

        clients' ns quelay-cc-c  10.214.0.1 vc ==== veth ==== vs 10.214.0.2  quelay-cc-s
        CPU 1: cc.py, clients, loads, target              server (taskset -c 0): CPU 0
        RPS on vc -> CPU 1                                RPS on vs -> CPU 0

    On loopback, the kernel delivers a datagram to its receiving socket on the sender's
    CPU, within the sender's system call, so a server is charged for its clients' receive
    path (GSO segmentation, socket enqueue, wake-ups) and its clients for its own. Here
    each veth's receive queue is steered (RPS, /sys/class/net/*/queues/rx-0/rps_cpus) to
    its own side's CPU, and each side runs on that CPU only: a server is charged for what
    its host would spend behind a NIC, and its clients' receive work stays with them.
    `server_core_secs` adds CPU 0's whole busy time (/proc/stat: user, nice, system, irq,
    softirq), which also holds receive work that ran while the server slept.

    Nothing is routed anywhere else: each namespace has its loopback and the veth only,
    no default route. The outer cc.py creates both, runs itself in the clients' namespace
    (QUELAY_CC_SIDE=clients in its environment) and deletes both at exit."""

    NS = {"clients": "quelay-cc-c", "server": "quelay-cc-s"}
    IP = {"clients": "10.214.0.1", "server": "10.214.0.2"}
    DEV = {"clients": "vc", "server": "vs"}
    CPU = {"clients": 1, "server": 0}
    ENV = "QUELAY_CC_SIDE"

    @staticmethod
    def inside() -> bool:
        return os.environ.get(TwoHosts.ENV) == "clients"

    @staticmethod
    def server_cmd(cmd: list) -> list:
        """`cmd` in the server's namespace on the server's CPU (`ip netns exec` and
        `taskset` both exec, so the pid is the server's)."""
        return ["ip", "netns", "exec", TwoHosts.NS["server"], "taskset", "-c",
                str(TwoHosts.CPU["server"]), *cmd]

    def setup(self) -> None:
        if (os.cpu_count() or 1) < 2:
            raise SetupError("--two-hosts needs 2 CPUs (one per side)")
        if not shutil.which("ip") or not shutil.which("taskset"):
            raise SetupError("--two-hosts needs `ip` (iproute2) and `taskset` (util-linux)")
        self.remove()  # stale namespaces of an interrupted run
        for ns in self.NS.values():
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        c, sv = self.NS["clients"], self.NS["server"]
        run(["ip", "-n", c, "link", "add", self.DEV["clients"], "type", "veth", "peer", "name",
             self.DEV["server"], "netns", sv])
        for side, ns in self.NS.items():
            dev = self.DEV[side]
            run(["ip", "-n", ns, "addr", "add", f"{self.IP[side]}/30", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            mask = f"{1 << self.CPU[side]:x}"
            run(["ip", "netns", "exec", ns, "sh", "-c",
                 f"echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"])

    def run_inside(self, argv: list[str]) -> int:
        """This script again, with the same arguments, in the clients' namespace on the
        clients' CPU; its exit code."""
        env = dict(os.environ, **{self.ENV: "clients"})
        cmd = ["ip", "netns", "exec", self.NS["clients"], "taskset", "-c",
               str(self.CPU["clients"]), sys.executable, __file__, *argv]
        try:
            return subprocess.run(cmd, env=env).returncode
        except KeyboardInterrupt:
            return 130

    def remove(self) -> None:
        for ns in self.NS.values():
            if not Path(f"/run/netns/{ns}").exists():
                continue
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def cpu_busy_secs(cpu: int | None = None) -> float:
    """CPU `cpu`'s busy time (all CPUs' with None) from /proc/stat: user + nice + system +
    irq + softirq (steal is left out: another tenant's)."""
    want = "cpu" if cpu is None else f"cpu{cpu}"
    with open("/proc/stat") as fh:
        for line in fh:
            c = line.split()
            if c[0] == want:
                user, nice, system, _idle, _iowait, irq, softirq = map(int, c[1:8])
                return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"/proc/stat has no line {want}")


# ---------------------------------------------------------------------------------------------
# Servers, clients, loads


def parse_spec(spec: str) -> tuple[str, str | None]:
    s, at, bin_ = spec.strip().partition("@")
    if s in ("singbox", "sing-box") and not at:
        return "singbox", None
    if at and not bin_:
        pass
    elif s == "shoes":
        return "shoes", None
    elif s == "quelay":
        return "quelay", None
    elif s.startswith("quelay:") and s[7:]:
        return "quelay", s[7:]
    raise SystemExit(f"cc.py: unknown server spec {spec!r} "
                     "(quelay, quelay:TYPE, quelay[:TYPE]@BINARY, singbox, shoes, "
                     "shoes@BINARY)")


def spec_binary(spec: str, ctx: Ctx) -> Path:
    """quelay[:TYPE]@BINARY runs another build (say, the last release) beside this one;
    shoes@BINARY another shoes build instead of scripts/get-shoes.sh's."""
    impl, _ = parse_spec(spec)
    _, _, bin_ = spec.partition("@")
    if bin_:
        return Path(bin_)
    return BINS["shoes"] if impl == "shoes" else ctx.quelay


def shoes_yaml(port: int, cert: Path, key: Path) -> str:
    """shoes' config (a YAML list of entries): the limits entry, then one Hysteria2 server
    on QUIC with password auth, the certificate, ALPN h3 and direct outbound to anything
    (the built-in rule group `allow-all-direct`). No Salamander, no Brutal in shoes."""
    j = json.dumps
    return ("- global_limits:\n"
            + "".join(f"    {k}: {v}\n" for k, v in SHOES_LIMITS.items())
            + f"- address: {j(f'{cmp.SERVER_HOST[0]}:{port}')}\n"
            "  transport: quic\n"
            "  quic_settings:\n"
            f"    cert: {j(str(cert))}\n"
            f"    key: {j(str(key))}\n"
            "    alpn_protocols: [h3]\n"
            "  protocol:\n"
            "    type: hysteria2\n"
            f"    password: {j(cmp.PASSWORD)}\n"
            "    udp_enabled: true\n"
            "  rules: allow-all-direct\n")


def server_config(spec: str, port: int, cert: Path, key: Path,
                  metrics: str | None = None) -> str:
    """`metrics`: where a quelay server serves /metrics (its engine counters are read
    before and after each load)."""
    impl, cc = parse_spec(spec)
    if impl == "singbox":
        return cmp.singbox_server_json(port, cert, key)
    if impl == "shoes":
        return shoes_yaml(port, cert, key)
    y = cmp.quelay_yaml(port, cert, key)
    return (y + (f"congestion:\n  type: {cc}\n" if cc else "")
            + (f"metrics:\n  listen: {metrics}\n" if metrics else ""))


# quelay's engine counters (/metrics, summed over workers), read around each load: loop
# iterations, those that blocked, UDP datagrams and batches both ways.
ENGINE_COUNTERS = ("quelay_loops_total", "quelay_waits_total", "quelay_rx_datagrams_total",
                   "quelay_rx_gro_batches_total", "quelay_tx_datagrams_total",
                   "quelay_tx_gso_batches_total", "quelay_forwarded_in_total",
                   "quelay_data_blocked_received_total", "quelay_receive_window_doublings_total")


def scrape(addr: str, timeout: float = 5.0) -> dict[str, float]:
    """ENGINE_COUNTERS from http://ADDR/metrics, each summed over its label sets. Retries
    for up to `timeout` (the listener starts with the server)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}/metrics", timeout=timeout) as r:
                text = r.read().decode()
            break
        except OSError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"/metrics at {addr}: {e}") from None
            time.sleep(0.05)
    out = {k: 0.0 for k in ENGINE_COUNTERS}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def install_shoes() -> Path:
    """scripts/get-shoes.sh target/peers: cargo install, cached (a no-op when
    target/peers/bin/shoes says it is 0.3.2); the first install compiles for minutes."""
    log(f"shoes: scripts/get-shoes.sh target/peers (cached; a first install compiles shoes "
        f"{SHOES_VERSION} for several minutes)")
    r = cmp.run_step("installing shoes (scripts/get-shoes.sh)",
                     ["bash", str(REPO / "scripts/get-shoes.sh"), str(PEERS_ROOT)], 3600,
                     env=dict(os.environ, SHOES_VERSION=SHOES_VERSION))
    path = Path(r.stdout.strip().splitlines()[-1])
    if not os.access(path, os.X_OK):
        raise SetupError(f"scripts/get-shoes.sh printed {path}, which is not executable")
    return path


def binary_version(path: Path) -> str:
    try:
        r = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                           timeout=10)
        return (r.stdout.strip().splitlines() or ["?"])[0]
    except Exception as e:
        return f"? ({e})"


def start_server(spec: str, ctx: Ctx, dir_: Path) -> Proc:
    """compare.start_server, with the spec's config (compare's knows two fixed configs)."""
    impl, _ = parse_spec(spec)
    port = cmp.free_port()
    metrics = f"{cmp.SERVER_HOST[0]}:{cmp.free_port()}" if impl == "quelay" else None
    err_path = str(dir_ / "server.err")
    if impl == "quelay":
        cfg = dir_ / "server.yaml"
        cmd, env = [spec_binary(spec, ctx), "server", "-c", cfg], {"QUELAY_LOG": "warn"}
    elif impl == "shoes":  # --no-reload: no watcher on the config file
        cfg = dir_ / "server.yaml"
        cmd, env = [spec_binary(spec, ctx), "--no-reload", cfg], {"RUST_LOG": "warn"}
    else:
        cfg = dir_ / "server.json"
        cmd, env = [ctx.singbox, "run", "-c", cfg], {}
    cfg.write_text(server_config(spec, port, ctx.cert, ctx.key, metrics))
    split = TwoHosts.inside()
    with open(dir_ / "server.out", "wb") as out, open(err_path, "wb") as err:
        p = cmp.spawn(TwoHosts.server_cmd(cmd) if split else cmd, out, err, env, cwd=dir_)
    # /proc/PID/net: the server's own namespace, which is not this one with --two-hosts.
    cmp.wait_ready(p, lambda: any(cmp.port_in(f"/proc/{p.pid}/net/{t}", port)
                                  for t in ("udp", "udp6")), f"{spec} server", err_path)
    pr = Proc(spec, p, f"{cmp.SERVER_HOST[0]}:{port}", port, err_path)
    pr.metrics = metrics  # type: ignore[attr-defined]
    return pr


def start_client(server_port: int, ctx: Ctx, dir_: Path, cg: Cgroup) -> Proc:
    """compare.start_sb_client (fixed file names, hence one directory per client), then the
    pid into the cgroup: the client is idle until the load starts (it dials on demand)."""
    dir_.mkdir()
    pr = cmp.start_sb_client(server_port, ctx, dir_)
    cg.add(pr.p.pid)
    return pr


def load_cmd(direction: str, socks: Proc, target: Proc, nbytes: int, timeout: float,
             clients: int, barrier: Path):
    if direction == "down":
        return [sys.executable, cmp.__file__, "_socksload", "--socks", socks.addr,
                "--target", target.addr, "--mode", "d", "--connections", "1",
                "--bytes", str(nbytes), "--timeout", str(int(timeout))]
    # Concurrent uploads all wait for the total: each one's time is the sample's.
    return [sys.executable, __file__, "_upload", "--socks", socks.addr, "--target",
            target.addr, "--bytes", str(nbytes), "--timeout", str(int(timeout)),
            "--expect-total", str(clients * (nbytes + HEADER))] + (
                ["--barrier", str(barrier), "--parties", str(clients)] if clients > 1 else [])


def cpu_or_none(pr: Proc | None) -> float | None:
    try:
        return proc_cpu(pr.p.pid) if pr is not None and pr.alive() else None
    except OSError:
        return None


def run_sample(spec: str, direction: str, rnd: int, a, ctx: Ctx, nft: Nft, cg: Cgroup) -> dict:
    s: dict = {"server": spec, "round": rnd, "direction": direction, "ok": False,
               "error": None, "clients": a.connections, "bytes_per_client": a.bytes}
    dir_ = Path(tempfile.mkdtemp(prefix=f"{spec.split('@')[0].replace(':', '-')}-{direction}-",
                                 dir=ctx.tmp))
    server = None
    clients: list[Proc] = []
    try:
        target = cmp.ensure_target(ctx)
        try:
            server = start_server(spec, ctx, dir_)
        except RuntimeError:
            s["start_failed"] = True
            raise
        s["server_port"] = server.port
        nft.create(server.port)
        for i in range(a.connections):
            clients.append(start_client(server.port, ctx, dir_ / f"client-{i}", cg))
        time.sleep(0.1)
        ltimeout = max(5.0, a.timeout - 5)
        barrier = dir_ / "barrier"
        barrier.mkdir()
        cmds = [load_cmd(direction, c, target, a.bytes, ltimeout, a.connections, barrier)
                for c in clients]
        if direction == "up":
            wait_target_idle(cmp.HOST, target.port)
        s["load_cmd"] = " ".join(["python3", *map(str, cmds[0][1:])])
        outs = [str(dir_ / f"load-{i}.out") for i in range(a.connections)]
        errs = [str(dir_ / f"load-{i}.err") for i in range(a.connections)]
        c0 = nft.read()
        cg0 = cg.stat()
        snmp0 = cmp.eng.udp_counters()
        eng0 = scrape(server.metrics) if server.metrics else None
        cpu0 = proc_cpu(server.p.pid)
        core0 = cpu_busy_secs(TwoHosts.CPU["server"]) if TwoHosts.inside() else None
        all0 = cpu_busy_secs()
        cl0 = [proc_cpu(c.p.pid) for c in clients]
        t0 = time.perf_counter()
        loads = []
        for cmd, o, e in zip(cmds, outs, errs):
            with open(o, "wb") as out, open(e, "wb") as err:
                loads.append(cmp.spawn(cmd, out, err))
        deadline = time.monotonic() + a.timeout
        results = []
        for p in loads:
            results.append(cmp.wait_load(p, max(1.0, deadline - time.monotonic()),
                                         [server, target, *clients]))
            if results[-1][0] != 0:  # a failed load: the others get 5 s more, not all
                deadline = min(deadline, time.monotonic() + 5)
        wall = time.perf_counter() - t0
        cpu1 = cpu_or_none(server)
        eng1 = scrape(server.metrics) if server.metrics else None
        if eng0 is not None and eng1 is not None:
            s["engine_delta"] = {k: eng1[k] - eng0[k] for k in ENGINE_COUNTERS}
        core1 = cpu_busy_secs(TwoHosts.CPU["server"]) if TwoHosts.inside() else None
        all1 = cpu_busy_secs()
        cl1 = [cpu_or_none(c) for c in clients]
        c1 = nft.read()
        cg1 = cg.stat()
        if cg1:
            s["client_cgroup_delta"] = {k: v - cg0.get(k, 0) for k, v in cg1.items()}
        snmp1 = cmp.eng.udp_counters()
        # Receive-buffer drops per socket (the sockets are fresh for this sample).
        s["server_socket_drops"] = udp_socket_drops(port=server.port,
                                                    net=f"/proc/{server.p.pid}/net")
        s["client_socket_drops"] = udp_socket_drops(
            inodes=set().union(*(socket_inodes(c.p.pid) for c in clients)))
        reps = [cmp.parse_json_out(o) for o in outs]
        for d in DIRS:
            h = hist_delta(c0[d]["hist"], c1[d]["hist"])
            inf = datagrams(h)
            s[d] = {"skbs": c1[d]["packets"] - c0[d]["packets"],
                    "bytes": c1[d]["bytes"] - c0[d]["bytes"], **inf, "len_hist": h}
            if inf["skbs"] != s[d]["skbs"]:
                s[d]["hist_mismatch"] = True  # the set was full: histogram incomplete
        s.update(
            wall_secs=wall,
            server_cpu_secs=None if cpu1 is None else cpu1 - cpu0,
            server_core_secs=None if core1 is None else core1 - core0,
            machine_busy_secs=all1 - all0,
            client_cpu_secs=(None if any(x is None for x in cl1)
                             else sum(x1 - x0 for x0, x1 in zip(cl0, cl1))),
            netns_udp_delta={k: snmp1[k] - snmp0.get(k, 0) for k in snmp1
                             if snmp1[k] != snmp0.get(k, 0)},
            load_exit=[r[0] for r in results], load_timed_out=[r[2] for r in results],
            load_cpu_secs=[r[1].ru_utime + r[1].ru_stime for r in results],
            reports=reps,
        )
        if not server.alive():
            raise RuntimeError(f"{spec} server died during the run (exit "
                               f"{server.p.returncode}): {tail(server.err_path)}")
        for c in clients:
            if not c.alive():
                raise RuntimeError(f"sing-box client died: {tail(c.err_path)}")
        problems = []
        for i, ((rc, _, timed_out, died), rep) in enumerate(zip(results, reps)):
            if died is not None:
                problems.append(f"load {i}: the {died.name} died: {tail(died.err_path)}")
            elif timed_out:
                problems.append(f"load {i}: timed out after {a.timeout:g} s (killed)")
            elif rep is None:
                problems.append(f"load {i}: exit {rc}, no JSON report: {tail(errs[i])}")
            elif rc != 0 or rep.get("errors") or rep.get("partial"):
                msgs = rep.get("error_messages") or []
                problems.append(f"load {i}: exit {rc}: "
                                f"{'; '.join(map(str, msgs[:2])) or tail(errs[i])}")
            elif rep.get("bytes") != a.bytes:
                problems.append(f"load {i}: moved {rep.get('bytes')} of {a.bytes} bytes")
        s["bytes"] = sum((r or {}).get("bytes") or 0 for r in reps)
        if problems:
            raise RuntimeError("; ".join(problems))
        derive(s, reps)
        s["ok"] = True
    except Exception as e:  # a failed sample is recorded, never fatal
        s["error"] = f"{type(e).__name__}: {e}"[:800] if not isinstance(e, RuntimeError) \
            else str(e)[:800]
    finally:
        for p in (*clients, server):
            if p is not None:
                kill(p.p)
        try:
            nft.delete()
        except Exception as e:
            log(f"nft: deleting table inet {NFT_TABLE} failed: {e}")
            if not s["error"]:
                s["ok"], s["error"] = False, f"nft delete failed: {e}"
        shutil.rmtree(dir_, ignore_errors=True)
    return s


def derive(s: dict, reps: list[dict]) -> None:
    """The compared figures. Data direction: server -> client (s2c) for down, c2s for up."""
    nbytes = s["bytes"]
    mib = nbytes / MIB
    s["secs"] = max(r["secs"] for r in reps)  # each load's own clock; they run together
    s["gbps"] = nbytes * 8 / s["secs"] / 1e9
    fwd, rev = ("s2c", "c2s") if s["direction"] == "down" else ("c2s", "s2c")
    F, R = s[fwd], s[rev]
    s["data_datagrams"], s["data_skbs"] = F["datagrams"], F["skbs"]
    # IP bytes with one IP+UDP header per datagram (an skb holds one for its whole batch).
    s["data_wire_bytes"] = F["bytes"] + IP_UDP * (F["datagrams"] - F["skbs"])
    s["dgrams_per_mib"] = F["datagrams"] / mib
    s["skbs_per_mib"] = F["skbs"] / mib
    s["rev_dgrams_per_mib"] = R["datagrams"] / mib
    s["wire_per_byte"] = s["data_wire_bytes"] / nbytes
    s["dgrams_per_skb"] = F["datagrams"] / F["skbs"] if F["skbs"] else None
    drops = s["client_socket_drops"] if fwd == "s2c" else s["server_socket_drops"]
    s["receiver_drops"] = drops
    s["receiver_drops_per_mib"] = drops / mib
    # Cross-check (host-wide, so only indicative): a receiver without UDP_GRO gets every
    # segment of a batch as its own datagram, counted in Udp InDatagrams or RcvbufErrors.
    u = s.get("netns_udp_delta") or {}
    s["check_datagrams"] = {"inferred_both_ways": F["datagrams"] + R["datagrams"],
                            "netns_InDatagrams_plus_RcvbufErrors":
                                u.get("InDatagrams", 0) + u.get("RcvbufErrors", 0)}
    cpu, ccpu, core = s["server_cpu_secs"], s["client_cpu_secs"], s["server_core_secs"]
    s["server_cpu_per_gib"] = None if cpu is None else cpu / (nbytes / GIB)
    s["server_core_per_gib"] = None if core is None else core / (nbytes / GIB)
    s["client_cpu_per_gib"] = None if ccpu is None else ccpu / (nbytes / GIB)
    e = s.get("engine_delta")
    if e:  # quelay's own counters, per MiB of payload
        s["loops_per_mib"] = e["quelay_loops_total"] / mib
        s["waits_per_mib"] = e["quelay_waits_total"] / mib
        # The data direction's datagrams per batch: per GSO send (down), per GRO receive (up).
        dg, b = ((e["quelay_tx_datagrams_total"], e["quelay_tx_gso_batches_total"])
                 if fwd == "s2c" else
                 (e["quelay_rx_datagrams_total"], e["quelay_rx_gro_batches_total"]))
        s["data_per_batch"] = dg / b if b else None
    if not F["datagrams"]:
        raise RuntimeError("nftables counted no datagram in the data direction")


# ---------------------------------------------------------------------------------------------
# Summary

KEYS = ("gbps", "dgrams_per_mib", "rev_dgrams_per_mib", "wire_per_byte", "dgrams_per_skb",
        "receiver_drops_per_mib", "server_cpu_per_gib", "server_core_per_gib",
        "client_cpu_per_gib", "loops_per_mib", "waits_per_mib", "data_per_batch")


def baseline_spec(specs: list[str], impl: str) -> str | None:
    """The spec that stands for `impl` in ratios: the first one of that implementation
    without @BINARY (`singbox` or `sing-box`; `shoes`)."""
    return next((s for s in specs if "@" not in s and parse_spec(s)[0] == impl), None)


def paired_ratios(spec: str, d: str, ok: list[dict], samples: list[dict], base: str | None,
                  keys: tuple[str, ...]) -> dict[str, float | None]:
    """Per key, the median over rounds of this server's figure / the base server's figure
    of the same round and direction (None for the base itself, or without a base)."""
    ratios: dict[str, list[float]] = {k: [] for k in keys}
    if base is not None and spec != base:
        for s in ok:
            b = next((x for x in samples if x["server"] == base and x["ok"]
                      and x["direction"] == d and x["round"] == s["round"]), None)
            for k in keys:
                if b is not None and s.get(k) and b.get(k):
                    ratios[k].append(s[k] / b[k])
    return {k: med(v) for k, v in ratios.items()}


def summarize(specs: list[str], dirs: list[str], samples: list[dict]) -> list[dict]:
    base, second = baseline_spec(specs, BASELINE), baseline_spec(specs, SECOND)
    rows = []
    for d in dirs:
        for spec in specs:
            mine = [s for s in samples if s["server"] == spec and s["direction"] == d]
            ok = [s for s in mine if s["ok"]]
            row = {"server": spec, "direction": d, "samples": len(mine), "ok": len(ok),
                   "errors": [s["error"] for s in mine if not s["ok"]]}
            for k in KEYS:
                row[k] = med([s.get(k) for s in ok])
            row["gbps_min"] = min((s["gbps"] for s in ok), default=None)
            row["gbps_max"] = max((s["gbps"] for s in ok), default=None)
            r1 = paired_ratios(spec, d, ok, samples, base, ("gbps", "dgrams_per_mib"))
            row["ratio_gbps"] = r1["gbps"]
            row["ratio_dgrams_per_mib"] = r1["dgrams_per_mib"]
            r1c = paired_ratios(spec, d, ok, samples, base,
                                ("server_cpu_per_gib", "server_core_per_gib"))
            row["ratio_server_cpu_per_gib"] = r1c["server_cpu_per_gib"]
            row["ratio_server_core_per_gib"] = r1c["server_core_per_gib"]
            r2 = paired_ratios(spec, d, ok, samples, second, ("gbps", "server_cpu_per_gib"))
            row[f"ratio_gbps_{SECOND}"] = r2["gbps"]
            row[f"ratio_server_cpu_per_gib_{SECOND}"] = r2["server_cpu_per_gib"]
            rows.append(row)
    return rows


def f(x, nd=2):
    return "–" if x is None else f"{x:,.{nd}f}"


def ratio(x):
    return "–" if x is None else f"{x:.2f}×"


def table(rows: list[dict], second: bool = False, core: bool = False) -> str:
    """The Markdown table; `second`: with the two ratio columns to shoes (when it ran);
    `core`: with the server CPU's busy time (--two-hosts) and its ratio."""
    cols = ["server", "dir", "ok", "goodput Gbit/s", "datagrams/MiB", "reverse datagrams/MiB",
            "wire B/payload B", "datagrams per skb (GSO)", "receiver drops/MiB",
            "server CPU-s/GiB", "client CPU-s/GiB", f"goodput ÷ {BASELINE}",
            f"datagrams/MiB ÷ {BASELINE}", f"server CPU-s/GiB ÷ {BASELINE}"]
    if core:
        cols += ["server core CPU-s/GiB", f"server core ÷ {BASELINE}"]
    if second:
        cols += [f"goodput ÷ {SECOND}", f"server CPU-s/GiB ÷ {SECOND}"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        okc = f"{r['ok']}/{r['samples']}"
        if not r["ok"]:
            out.append(f"| {r['server']} | {r['direction']} | {okc} | FAIL |"
                       + " – |" * (len(cols) - 4))
            continue
        out.append(
            f"| {r['server']} | {r['direction']} | {okc} | {f(r['gbps'])} | "
            f"{f(r['dgrams_per_mib'], 0)} | {f(r['rev_dgrams_per_mib'], 0)} | "
            f"{f(r['wire_per_byte'], 3)} | {f(r['dgrams_per_skb'], 1)} | "
            f"{f(r['receiver_drops_per_mib'], 1)} | "
            f"{f(r['server_cpu_per_gib'])} | {f(r['client_cpu_per_gib'])} | "
            f"{ratio(r['ratio_gbps'])} | {ratio(r['ratio_dgrams_per_mib'])} | "
            f"{ratio(r['ratio_server_cpu_per_gib'])} |"
            + (f" {f(r['server_core_per_gib'])} | {ratio(r['ratio_server_core_per_gib'])} |"
               if core else "")
            + (f" {ratio(r.get(f'ratio_gbps_{SECOND}'))} | "
               f"{ratio(r.get(f'ratio_server_cpu_per_gib_{SECOND}'))} |" if second else ""))
    eng = [r for r in rows if r["ok"] and r.get("loops_per_mib") is not None]
    if eng:
        out += ["", "quelay's engine counters (/metrics, summed over workers; medians):", "",
                "| server | dir | loops/MiB | waits/MiB | data datagrams per batch (down: "
                "per GSO send; up: per GRO receive) |", "|---|---|---|---|---|"]
        out += [f"| {r['server']} | {r['direction']} | {f(r['loops_per_mib'], 1)} | "
                f"{f(r['waits_per_mib'], 1)} | {f(r['data_per_batch'], 1)} |" for r in eng]
    errs = [(r["server"], r["direction"], e) for r in rows for e in r["errors"]]
    if errs:
        out += ["", "Failed samples:"] + [f"- {s} {d}: {e}" for s, d, e in errs]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Upload load (compare.py's _socksload only downloads)


SOCK_DIAG_BY_FAMILY = 20
NETLINK_SOCK_DIAG = 4
INET_DIAG_INFO = 2
TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in struct tcp_info


def target_rx(host: str, port: int) -> tuple[int, int]:
    """(established connections, sum of tcpi_bytes_received) of the target's TCP sockets
    (local address host:port, IPv4): the kernel's count of bytes that reached them. Asked
    of the kernel over netlink (sock_diag, as `ss -tin` does) without a process per poll:
    the upload loads poll this every 5 ms, and forking `ss` that often took a CPU-bound
    machine's time from the servers under test."""
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1),
                      0, 1 << 1)  # states: TCP_ESTABLISHED
    req += struct.pack("!HH", port, 0) + socket.inet_aton(host) + bytes(12) + bytes(16)
    req += struct.pack("=IQ", 0, 0xFFFFFFFFFFFFFFFF)  # any interface, no cookie
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, 0x301, 1, 0) + req
    conns = got = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(5)
        nl.send(msg)
        done = False
        while not done:
            data = nl.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                ln, typ = struct.unpack_from("=IH", data, off)
                if ln < 16:
                    raise RuntimeError("sock_diag: malformed netlink message")
                if typ == 3:  # NLMSG_DONE
                    done = True
                    break
                if typ == 2:  # NLMSG_ERROR
                    err = struct.unpack_from("=i", data, off + 16)[0]
                    raise RuntimeError(f"sock_diag: error {err}")
                body = data[off + 16:off + ln]
                sport = struct.unpack_from("!H", body, 4)[0]
                src = socket.inet_ntoa(body[8:12])
                if sport == port and src == host:
                    conns += 1
                    a = 72  # struct inet_diag_msg, then its attributes
                    while a + 4 <= len(body):
                        alen, atyp = struct.unpack_from("=HH", body, a)
                        if alen < 4:
                            break
                        if atyp == INET_DIAG_INFO and alen >= 4 + TCPI_BYTES_RECEIVED + 8:
                            got += struct.unpack_from("=Q", body, a + 4 + TCPI_BYTES_RECEIVED)[0]
                        a += (alen + 3) & ~3
                off += (ln + 3) & ~3
    return conns, got


def wait_target_idle(host: str, port: int, timeout: float = 10.0) -> None:
    """Upload completion sums over all the target's connections: none may be left over."""
    deadline = time.monotonic() + timeout
    while True:
        conns, _ = target_rx(host, port)
        if not conns:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the target still has {conns} connection(s) from earlier "
                               f"samples after {timeout:g} s")
        time.sleep(0.05)


def cmd_upload(a) -> int:
    """One TCP connection (through SOCKS5 if --socks) to the bench target: header 'u' + u64
    BE length, then the bytes. Done when the target's sockets have received --expect-total
    bytes (TCP_INFO bytes_received, `target_rx`, polled every 5 ms once everything is
    written): the target only answers at EOF, and sing-box's SOCKS inbound does not pass a
    half-close on (it closes the whole connection at once, so the answer never comes back).
    Concurrent loads (--barrier) sum over all the target's connections: the first one done
    writing polls for all of them and publishes the moment the total arrived (CLOCK_MONOTONIC,
    file `total` in the barrier directory); the others wait for that file, keeping their
    connections open, since a closed socket leaves the kernel's list and its bytes with it.
    One poller, not one per load: polling costs CPU that the servers under test need."""
    th, ph = a.target.rsplit(":", 1)
    expect = a.expect_total or a.bytes + HEADER
    errors: list[str] = []
    sent = got = 0
    secs = None
    t0 = time.monotonic()  # as compare.py's _socksload: from before the connect
    try:
        with socket.socket() as s:
            s.settimeout(a.timeout)
            if a.socks:
                h, p = a.socks.rsplit(":", 1)
                s.connect((h, int(p)))
                cmp.socks5_connect(s, (th, int(ph)))
            else:  # direct, no proxy (to check the protocol and this load)
                s.connect((th, int(ph)))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + a.timeout
            s.sendall(b"u" + struct.pack(">Q", a.bytes))
            buf = memoryview(bytes(1 << 20))
            while sent < a.bytes:
                s.settimeout(max(0.5, deadline - time.monotonic()))
                sent += s.send(buf[:min(len(buf), a.bytes - sent)])
            total = Path(a.barrier, "total") if a.barrier else None
            poller = total is None
            if total is not None:
                try:
                    os.close(os.open(Path(a.barrier, "poller"), os.O_CREAT | os.O_EXCL))
                    poller = True
                except FileExistsError:
                    pass
            if poller:
                while True:
                    _, got = target_rx(th, int(ph))
                    if got >= expect:
                        t_done = time.monotonic()
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"timed out: the target received {got} of "
                                           f"{expect} bytes")
                    time.sleep(0.005)
                if total is not None:
                    tmp = Path(a.barrier, f"total.{os.getpid()}")
                    tmp.write_text(f"{t_done} {got}")
                    tmp.rename(total)
            else:
                while not total.exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError("timed out waiting for the polling load")
                    time.sleep(0.005)
                when, count = total.read_text().split()
                t_done, got = float(when), int(count)
            secs = t_done - t0
            if got != expect:
                errors.append(f"the target's connections received {got} bytes, expected "
                              f"{expect} (another connection to the target?)")
    except Exception as e:
        errors.append(f"connection 0: {type(e).__name__}: {e} (sent {sent})")
    if secs is None:
        secs = time.monotonic() - t0
    done = a.bytes if got >= expect else 0
    print(json.dumps({"scenario": "socks-upload", "connections": 1, "bytes": done,
                      "sent": sent, "target_bytes_received": got, "secs": secs,
                      "goodput_bps": done * 8 / secs, "errors": len(errors),
                      "error_messages": errors[:5], "partial": bool(errors)}), flush=True)
    return 1 if errors else 0


HEADER = 9  # mode byte + u64 length


# ---------------------------------------------------------------------------------------------


CLEANUP: list = []


def cleanup() -> None:
    kill_all()
    for fn in CLEANUP:
        try:
            fn()
        except Exception as e:
            log(f"cleanup: {e}")
    CLEANUP.clear()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quelay-bin", default=str(REPO / "target/release/quelay"),
                    help="quelay binary (default target/release/quelay; never built here)")
    ap.add_argument("--quelay-bench-bin", default=str(REPO / "target/release/quelay-bench"),
                    help="quelay-bench binary, for `quelay-bench target` (default "
                         "target/release/quelay-bench; never built here)")
    ap.add_argument("--servers", default="quelay,quelay:reno,singbox",
                    help="comma list: quelay, quelay:TYPE (congestion.type), "
                         "quelay[:TYPE]@BINARY, singbox, shoes, shoes@BINARY")
    ap.add_argument("--bytes", type=parse_size, default=512 * MIB,
                    help="payload per client per sample (default 512M; accepts 64M, 1G)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    ap.add_argument("--connections", type=int, default=1,
                    help="concurrent sing-box clients, one process and one TCP each (1)")
    ap.add_argument("--direction", choices=("down", "up", "both"), default="down",
                    help="down: server -> client payload; up: client -> server; both")
    ap.add_argument("--cpu-quota", type=int, default=0, metavar="PERCENT",
                    help="cgroup v1 CPU quota of all sing-box clients together, %% of one "
                         "CPU (default 0: unlimited)")
    ap.add_argument("--two-hosts", action="store_true",
                    help="server and clients in two network namespaces joined by a veth, on "
                         "a CPU each, with each side's receive work on its own CPU (see "
                         "TwoHosts); default: everything on loopback")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds per sample's load (default 300)")
    ap.add_argument("--out", default=str(REPO / "bench/results"), help="output directory")
    a = ap.parse_args()
    specs = [s.strip() for s in a.servers.split(",") if s.strip()]
    for s in specs:
        parse_spec(s)
    if len(set(specs)) != len(specs) or not specs:
        ap.error("--servers: a non-empty list without duplicates")
    if a.connections < 1 or a.rounds < 1 or a.bytes < 1:
        ap.error("--connections, --rounds and --bytes must be positive")
    if not 0 <= a.cpu_quota <= 100 * os.cpu_count():
        ap.error("--cpu-quota: 0 .. 100 × CPUs")
    dirs = ["down", "up"] if a.direction == "both" else [a.direction]
    if a.two_hosts and not TwoHosts.inside():
        if os.geteuid() != 0:
            log("cc.py: setup failed: --two-hosts needs root (network namespaces)")
            return 2
        hosts = TwoHosts()
        atexit.register(hosts.remove)
        try:
            hosts.setup()
        except SetupError as e:
            log(f"cc.py: setup failed: {e}")
            return 2
        log(f"two hosts: server in {TwoHosts.NS['server']} ({TwoHosts.IP['server']}, CPU "
            f"{TwoHosts.CPU['server']}), clients in {TwoHosts.NS['clients']} "
            f"({TwoHosts.IP['clients']}, CPU {TwoHosts.CPU['clients']})")
        return hosts.run_inside(sys.argv[1:])
    if TwoHosts.inside():
        cmp.HOST = TwoHosts.IP["clients"]  # the target and the clients' SOCKS inbounds
        cmp.SERVER_HOST[0] = TwoHosts.IP["server"]

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    atexit.register(cleanup)

    t_start = time.monotonic()
    started = dt.datetime.now(dt.timezone.utc)
    cg = Cgroup(a.cpu_quota)
    try:
        if os.geteuid() != 0:
            raise SetupError("needs root (nftables counters, cgroups)")
        nft = Nft(ensure_nft(), split=TwoHosts.inside())
        CLEANUP.append(nft.delete)
        nft.delete()  # a stale table from an interrupted run
        CLEANUP.append(cg.remove)
        cg.setup()
        singbox = cmp.install_singbox()
        if any(parse_spec(s)[0] == "shoes" and "@" not in s for s in specs):
            BINS["shoes"] = install_shoes()
        for s in specs:
            if "@" in s and not os.access(s.partition("@")[2], os.X_OK):
                raise SetupError(f"{s}: {s.partition('@')[2]} is not an executable file")
        quelay, bench = cmp.build_quelay(a.quelay_bin, [["target", "--help"]],
                                         a.quelay_bench_bin)
    except SetupError as e:
        log(f"cc.py: setup failed: {e}")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="quelay-cc-"))
    CLEANUP.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    try:
        cert, key = cmp.make_cert(tmp, None)
    except SetupError as e:
        log(f"cc.py: setup failed: {e}")
        return 2
    ctx = Ctx(quelay=quelay, bench=bench, singbox=singbox, cert=cert, key=key, tmp=tmp)
    vers = cmp.versions(ctx)
    for s in specs:  # the first line of `--version` of shoes and of every @BINARY
        if "@" in s or parse_spec(s)[0] == "shoes":
            vers["shoes" if "@" not in s else s] = binary_version(spec_binary(s, ctx))
    # Private copies: every sample runs the same build even if cargo rewrites the binaries.
    ctx.quelay = tmp / "quelay"
    shutil.copy2(quelay, ctx.quelay)
    ctx.bench = tmp / "quelay-bench"
    shutil.copy2(bench, ctx.bench)
    mach = cmp.machine()
    if TwoHosts.inside():  # this process is confined to the clients' CPU
        mach["nproc"] = os.cpu_count()
    log(f"machine: {mach['nproc']} cores, kernel {mach['kernel']}, load "
        f"{' '.join(mach['loadavg_start'])}; {vers}")
    samples: list[dict] = []
    interrupted = False
    start_fail = {spec: 0 for spec in specs}
    start_err = {spec: "" for spec in specs}
    try:
        try:
            cmp.ensure_target(ctx)
        except RuntimeError as e:
            raise SetupError(f"the bench target does not start: {e}") from None
        for r in range(a.rounds):
            order = specs if r % 2 == 0 else specs[::-1]
            for d in dirs:
                for spec in order:
                    if start_fail[spec] >= 2:
                        s = {"server": spec, "round": r, "direction": d, "ok": False,
                             "error": f"skipped: the {spec} server failed to start twice "
                                      f"({start_err[spec][:300]})"}
                    else:
                        s = run_sample(spec, d, r, a, ctx, nft, cg)
                        if s.pop("start_failed", False):
                            start_fail[spec] += 1
                            start_err[spec] = s["error"]
                        elif s["ok"]:
                            start_fail[spec] = 0
                    samples.append(s)
                    if s["ok"]:
                        msg = (f"{s['gbps']:.2f} Gbit/s, {s['dgrams_per_mib']:.0f} "
                               f"datagrams/MiB in {s['skbs_per_mib']:.0f} skbs/MiB (reverse "
                               f"{s['rev_dgrams_per_mib']:.0f}), {s['wire_per_byte']:.3f} "
                               f"wire B/B, receiver drops {s['receiver_drops']}, server "
                               f"{f(s['server_cpu_per_gib'])} CPU-s/GiB, clients "
                               f"{f(s['client_cpu_per_gib'])} CPU-s/GiB")
                    else:
                        msg = f"FAILED: {s['error']}"
                    log(f"[round {r + 1}/{a.rounds}] {spec} {d}: {msg}")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; reporting what was measured")
    except SetupError as e:
        log(f"cc.py: {e}")
        cleanup()
        return 2
    finally:
        kill_all()
        cg.remove()
    rows = summarize(specs, dirs, samples)
    second = baseline_spec(specs, SECOND)
    tbl = table(rows, second is not None, core=TwoHosts.inside())
    mach["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    cmdline = ("python3 bench/cc.py " + " ".join(sys.argv[1:])).strip()
    data = {
        "command": cmdline,
        "started": started.isoformat(timespec="seconds"),
        "duration_secs": time.monotonic() - t_start,
        "machine": mach,
        "versions": vers,
        "options": {k: v for k, v in vars(a).items()},
        "interrupted": interrupted,
        "counting": COUNTING,
        "server_configs": {s: server_config(s, 0, Path("cert.pem"), Path("key.pem"))
                           for s in specs},
        "client_config": cmp.singbox_client_json(0, 0),
        "summary": rows,
        "samples": samples,
    }
    m = mach
    md = "\n".join([
        f"# Hysteria2 congestion control with the sing-box client, "
        f"{'two hosts (veth)' if TwoHosts.inside() else 'loopback'}, {data['started']}",
        "",
        f"- command: `{cmdline}`",
        f"- machine: {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}, load "
        f"{' '.join(m['loadavg_start'])} at start, {' '.join(m['loadavg_end'])} at end; "
        f"commit {m['commit']}; quelay {vers['quelay_bin']} (built "
        f"{vers['quelay_bin_mtime']}); {vers.get('sing-box')}"
        + "".join(f"; {k}: {v}" for k, v in vers.items() if k == "shoes" or "@" in k),
        f"- {a.rounds} round(s) × {human_bytes(a.bytes)} × {a.connections} client(s) per "
        f"sample, servers interleaved; medians; ratios = median of per-round ratios to "
        f"{BASELINE}"
        + (f" (and, in the last two columns, to {second}: goodput, server CPU-s/GiB)"
           if second else "") + "; client CPU quota "
        + (f"{a.cpu_quota} % of one CPU (cgroup v1, all clients together)" if a.cpu_quota
           else "none") + f"; run time {data['duration_secs'] / 60:.1f} min"
        + (" (INTERRUPTED)" if interrupted else ""),
        f"- wire counts: {data['counting']}; data direction = server → client for down, "
        "client → server for up; \"reverse\" = the other direction (mostly ACKs); receiver "
        "drops = the `drops` of /proc/net/udp at the receiving sockets (full receive "
        "buffer); CPU = /proc utime+stime over the load"
        + ("; two hosts: server in its own network namespace on CPU 0, clients, loads and "
           "target in another on CPU 1, joined by a veth whose receive queues are steered "
           "(RPS) to their own side's CPU, so each side pays its own receive path; server "
           "core = CPU 0's busy time (/proc/stat), wire counts on the clients' side (s2c on "
           "the input hook, c2s on output)." if TwoHosts.inside() else
           "; loopback: a receiver's kernel work runs in the sender's system call and is "
           "charged to the sender (--two-hosts separates them)."),
        "",
        tbl,
        "",
    ])
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"cc-{started:%Y%m%dT%H%M%SZ}"
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(md)
    print(tbl)
    log(f"wrote {out_dir / stem}.md, {stem}.json")
    failed = [s for s in samples if not s["ok"]]
    if interrupted:
        return 130
    if failed or not samples:
        log(f"cc.py: {len(failed)} of {len(samples)} samples FAILED")
        return 1
    return 0


def sub_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"cc.py {argv[0]}")
    if argv[0] != "_upload":
        raise SystemExit(f"unknown helper {argv[0]}")
    ap.add_argument("--socks", help="SOCKS5 proxy H:P (default: connect directly)")
    ap.add_argument("--target", required=True)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--expect-total", type=int, default=0,
                    help="bytes all the target's connections must receive (default: "
                         "--bytes + 9, this connection alone)")
    ap.add_argument("--barrier", help="directory shared by concurrent loads: none closes "
                                      "its connection before all have seen the total")
    ap.add_argument("--parties", type=int, default=1, help="loads sharing --barrier")
    return cmd_upload(ap.parse_args(argv[1:]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        sys.exit(sub_main(sys.argv[1:]))
    sys.exit(main())
