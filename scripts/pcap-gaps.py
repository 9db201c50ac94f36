#!/usr/bin/env python3
"""Finds the silences in a test capture (`QUELAY_TEST_PCAP=1`, `veth.pcap`).

The capture is taken on the client side of an emulated path: UDP headers and the first bytes
of each payload. A connection is followed by the destination connection ID its client puts
on short-header packets to the server (quelay's server issues 8-byte CIDs), across the
client's port changes; the server's packets to any of those ports are the connection's.
For every gap longer than the threshold in what the server sent, this prints when it began,
how long it lasted, the port, and what the client sent meanwhile (a client that keeps
probing while the server is silent, or both silent).

    scripts/pcap-gaps.py target/test-tmp/<test>/veth.pcap [--server-port 443] [--gap 2.0]
    scripts/pcap-gaps.py veth.pcap --port 49631 --at 12.3  # one port's packets near 12.3 s

Standard library only. Times are seconds since the capture's first packet.
"""

import argparse
import collections
import struct
import sys

CID_LEN = 8


def packets(path):
    """Yields (time, src_port, dst_port, udp_payload_len, payload_head) for IPv4 UDP."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            sys.exit(f"{path}: not a pcap file")
        magic = struct.unpack("<I", head[:4])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D):
            sys.exit(f"{path}: not a little-endian pcap file (magic {magic:#x})")
        scale = 1e9 if magic == 0xA1B23C4D else 1e6
        link = struct.unpack("<I", head[20:24])[0]
        offset = {1: 14, 113: 16}.get(link, 0)  # Ethernet, Linux cooked, raw IP
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, incl, _ = struct.unpack("<IIII", rec)
            ip = f.read(incl)[offset:]
            if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            ihl = (ip[0] & 15) * 4
            sport, dport, ulen = struct.unpack(">HHH", ip[ihl : ihl + 6])
            yield sec + frac / scale, sport, dport, ulen - 8, ip[ihl + 8 :]


def gaps(path, server_port, threshold):
    pk = list(packets(path))
    if not pk:
        sys.exit(f"{path}: no UDP packets")
    t0 = pk[0][0]
    conn_of_port = {}
    for _, sport, dport, _, p in pk:
        if dport == server_port and p and not p[0] & 0x80 and len(p) > CID_LEN:
            conn_of_port.setdefault(sport, p[1 : 1 + CID_LEN].hex())
    to_client = collections.defaultdict(list)
    from_client = collections.defaultdict(list)
    for t, sport, dport, _, _ in pk:
        if sport == server_port and dport in conn_of_port:
            to_client[conn_of_port[dport]].append((t, dport))
        elif dport == server_port and sport in conn_of_port:
            from_client[conn_of_port[sport]].append(t)
    found = 0
    for conn, sent in sorted(to_client.items()):
        for (a, port), (b, _) in zip(sent, sent[1:]):
            if b - a < threshold:
                continue
            found += 1
            meanwhile = [round(t - a, 3) for t in from_client[conn] if a < t < b]
            print(
                f"connection {conn}: server silent {b - a:.2f} s from {a - t0:.3f} "
                f"(port {port}); client sent {len(meanwhile)} meanwhile, at +{meanwhile[:12]}"
            )
    print(f"{found} gap(s) over {threshold} s in {len(to_client)} connection(s)")


def around(path, port, at, window):
    pk = list(packets(path))
    t0 = pk[0][0] if pk else 0
    for t, sport, dport, n, p in pk:
        if port in (sport, dport) and abs(t - t0 - at) <= window:
            way = "C>S" if dport != port else "S>C"
            print(f"{t - t0:10.4f} {way} {n:6} {p[:12].hex()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pcap")
    ap.add_argument("--server-port", type=int, default=443)
    ap.add_argument("--gap", type=float, default=2.0, help="seconds of server silence")
    ap.add_argument("--port", type=int, help="list one client port's packets instead")
    ap.add_argument("--at", type=float, default=0.0, help="with --port: around this time")
    ap.add_argument("--window", type=float, default=1.0, help="with --port: +/- seconds")
    a = ap.parse_args()
    if a.port:
        around(a.pcap, a.port, a.at, a.window)
    else:
        gaps(a.pcap, a.server_port, a.gap)


if __name__ == "__main__":
    main()
