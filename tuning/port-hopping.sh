#!/usr/bin/env bash
# Port hopping, server side: redirects UDP sent to any port of a list or range to the port
# quelay listens on, with one nftables table (as the reference server's own rules do).
#
#   port-hopping.sh [--iface IF] [--addr IP] [--dry-run] [--revert] PORTS PORT
#
# PORTS      the ports clients hop over, as in `listen`: 20000-50000, or 20000-20100,30000
# PORT       the port `quelay server` binds (the lowest port of a `listen` range)
# --iface IF redirect only what arrives on interface IF (default: every interface)
# --addr IP  for a `listen` address of its own: match UDP to IP and dnat it to IP:PORT, as
#            the server's own rules do then (default: redirect what reaches any address)
# --dry-run  print the ruleset, change nothing
# --revert   remove the table
#
# The table is `inet quelay_hop_PORT`: prerouting redirects what arrives from elsewhere,
# output what local processes send to a local address (a client on the same host, tests).
# Running it again replaces the table in one transaction, so it is idempotent. Rules do not
# survive a reboot: run it from the unit (ExecStartPre=, see quelay.service) or at boot.
# `quelay doctor -c server.yaml` checks that the table matches the config's `listen`.
set -euo pipefail
export LC_ALL=C

usage() {
    echo "usage: port-hopping.sh [--iface IF] [--addr IP] [--dry-run] [--revert] PORTS PORT" >&2
    exit 2
}

iface=
addr=
dry=0
revert=0
args=()
while [ $# -gt 0 ]; do
    case $1 in
        --iface)
            [ $# -ge 2 ] || usage
            iface=$2
            shift 2
            ;;
        --iface=*) iface=${1#--iface=}; shift ;;
        --addr)
            [ $# -ge 2 ] || usage
            addr=$2
            shift 2
            ;;
        --addr=*) addr=${1#--addr=}; shift ;;
        --dry-run) dry=1; shift ;;
        --revert) revert=1; shift ;;
        -h | --help) usage ;;
        -*) echo "port-hopping.sh: unknown argument: $1" >&2; usage ;;
        *) args+=("$1"); shift ;;
    esac
done

port_ok() {
    [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}

if [ "$revert" = 1 ]; then
    [ ${#args[@]} -ge 1 ] || usage
    port=${args[-1]}
else
    [ ${#args[@]} -eq 2 ] || usage
    ports=${args[0]}
    port=${args[1]}
fi
port_ok "$port" || { echo "port-hopping.sh: PORT: $port is not a port (1 to 65535)" >&2; exit 2; }
table="quelay_hop_$port"

if [ "$revert" = 1 ]; then
    if [ "$dry" = 1 ]; then
        echo "would run: nft delete table inet $table"
    elif nft list table inet "$table" >/dev/null 2>&1; then
        nft delete table inet "$table"
        echo "removed table inet $table"
    else
        echo "no table inet $table: nothing to remove"
    fi
    exit 0
fi

# PORTS: items N or A-B, comma-separated, as `listen` takes them.
set_items=()
IFS=, read -r -a items <<<"$ports"
for item in "${items[@]}"; do
    if [[ $item =~ ^([0-9]+)-([0-9]+)$ ]]; then
        a=${BASH_REMATCH[1]} b=${BASH_REMATCH[2]}
        port_ok "$a" && port_ok "$b" || { echo "port-hopping.sh: PORTS: bad range $item" >&2; exit 2; }
        [ "$a" -le "$b" ] || { t=$a; a=$b; b=$t; }
        set_items+=("$a-$b")
    elif port_ok "$item"; then
        set_items+=("$item")
    else
        echo "port-hopping.sh: PORTS: bad port $item (expected e.g. 20000-50000 or 20000,20002-20010)" >&2
        exit 2
    fi
done
set_text=$(IFS=,; echo "${set_items[*]}")
set_text=${set_text//,/, }
match_iface=
[ -z "$iface" ] || match_iface="iifname \"$iface\" "
# The rules' match and target: every local address and a redirect, or one address and a
# dnat to it (a redirect goes to the receiving interface's first address).
pre_match="${match_iface}"
out_match="fib daddr type local "
target="redirect to :$port"
if [ -n "$addr" ]; then
    if [[ $addr =~ ^[0-9]+(\.[0-9]+){3}$ ]]; then
        pre_match="${match_iface}ip daddr $addr "
        out_match="ip daddr $addr "
        target="dnat ip to $addr:$port"
    elif [[ $addr =~ ^[0-9A-Fa-f:.]+$ && $addr == *:* ]]; then
        pre_match="${match_iface}ip6 daddr $addr "
        out_match="ip6 daddr $addr "
        target="dnat ip6 to [$addr]:$port"
    else
        echo "port-hopping.sh: --addr: $addr is not an IP address" >&2
        exit 2
    fi
fi

# Declaring, deleting and defining the table in one file makes the change atomic and the
# script idempotent.
ruleset="table inet $table
delete table inet $table
table inet $table {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ${pre_match}udp dport { $set_text } counter $target
    }
    chain output {
        type nat hook output priority -100; policy accept;
        ${out_match}udp dport { $set_text } counter $target
    }
}"

if [ "$dry" = 1 ]; then
    echo "$ruleset"
    exit 0
fi
command -v nft >/dev/null || { echo "port-hopping.sh: nft not found (apt-get install nftables)" >&2; exit 1; }
echo "$ruleset" | nft -f -
echo "UDP to ports $ports now reaches port $port (table inet $table)"
