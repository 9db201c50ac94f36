#!/usr/bin/env python3
"""What a large ACL costs quelay's server: request/response at 1,000 concurrent streams
(1 KiB each way, a new proxy stream per request, 4 connections), with no ACL and with a
10,000-rule ACL whose last rule lets the bench target through, interleaved over rounds.

    python3 bench/acl.py                  # 3 rounds of 5 s per variant
    python3 bench/acl.py --rounds 5 --duration 10

Each request's target is the bench target's IP literal, so every request is routed
through the whole rule list: 5,000 CIDR rules, 2,500 exact names and 2,500 suffixes that do
not match, then `direct(all)`. Reuses bench/compare.py's set-up (quelay and quelay-bench
built with cargo, `quelay-bench target`, one fresh server per sample, CPU from /proc).
Prints one line per sample and the median requests/s of each variant and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as c  # noqa: E402

RULES = 10_000


def acl_yaml(dir_: Path) -> str:
    """An `acl` section naming a rule file of RULES rules, none matching 127.0.0.1 but the
    last."""
    lines = []
    for i in range(RULES // 2):
        lines.append(f"reject(10.{i // 256 % 256}.{i % 256}.0/24)")
    for i in range(RULES // 4):
        lines.append(f"reject(host{i}.blocked.example)")
        lines.append(f"reject(suffix:zone{i}.example)")
    lines = lines[: RULES - 1] + ["direct(all)"]
    path = dir_ / "acl.txt"
    path.write_text("\n".join(lines) + "\n")
    return f"acl:\n  file: {path}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per sample")
    ap.add_argument("--quelay-bin", help="use this quelay binary; no cargo build")
    a = ap.parse_args()
    try:
        quelay, bench = c.build_quelay(a.quelay_bin, [["hy2", "--help"], ["target", "--help"]])
    except c.SetupError as e:
        c.log(f"acl.py: setup failed: {e}")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="quelay-acl-bench-"))
    cert, key = c.make_cert(tmp, None)
    ctx = c.Ctx(quelay=quelay, bench=bench, singbox=Path("/nonexistent"), cert=cert, key=key,
                tmp=tmp)
    d = a.duration
    sc = c.Scenario(
        key="rr-1000", label="rr 1 KiB, 1000 concurrent (4 conn)", kind="hy2", group="rr",
        duration=d, connections=4,
        args=["--scenario", "rr", "--connections", "4", "--concurrency", "1000",
              "--size", "1024", "--duration", f"{d:g}"])
    variants = {"no ACL": "", f"{RULES}-rule ACL": acl_yaml(tmp)}
    rates: dict[str, list[float]] = {v: [] for v in variants}
    pairs: list[float] = []
    failed = False
    try:
        c.ensure_target(ctx)
        for r in range(a.rounds):
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            got = {}
            for v in order:
                c.QUELAY_EXTRA_YAML[0] = variants[v]
                s = c.run_sample(sc, "quelay", ctx)
                if not s["ok"]:
                    c.log(f"round {r + 1}, {v}: FAILED: {s['error']}")
                    failed = True
                    continue
                got[v] = s["rate"]
                rates[v].append(s["rate"])
                c.log(f"round {r + 1}, {v}: {s['rate']:.0f} req/s, server CPU "
                      f"{s['cpu_per_1k'] * 1000:.1f} ms per 1k requests")
            if len(got) == 2:
                pairs.append(got[f"{RULES}-rule ACL"] / got["no ACL"])
    finally:
        if ctx.target is not None:
            c.kill(ctx.target.p)
    for v, xs in rates.items():
        if xs:
            print(f"{v}: median {statistics.median(xs):.0f} req/s over {len(xs)} samples")
    if pairs:
        print(f"with the ACL / without: median {statistics.median(pairs):.3f} "
              f"(per-round pairs: {', '.join(f'{p:.3f}' for p in pairs)})")
    return 1 if failed or not pairs else 0


if __name__ == "__main__":
    sys.exit(main())
