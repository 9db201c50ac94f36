#!/usr/bin/env bash
# Sets up a NIC for quelay: UDP GRO/GSO offloads, RSS hashing of UDP on ports, and the
# NIC's queue interrupts pinned to the CPUs the workers run on.
#
#   nic.sh [--dry-run] [--iface IFACE] [--workers N] [--root DIR]
#
# --dry-run      print every command, prefixed `would run:`, and run none
# --iface IFACE  the interface (default eth0)
# --workers N    quelay's worker count (default: online CPUs); queue i's interrupt goes to
#                the CPU of worker i mod N, the i-th online CPU, as quelay pins them
# --root DIR     read /proc and /sys under DIR (default /); ethtool still acts on the host
#
# Why each step, and how to undo it: tuning/README.md.
set -euo pipefail
export LC_ALL=C

usage() {
    echo "usage: nic.sh [--dry-run] [--iface IFACE] [--workers N] [--root DIR]" >&2
    exit 2
}

dry=0
iface=eth0
workers=""
root=/
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry=1; shift ;;
        --iface | --workers | --root)
            [ $# -ge 2 ] || usage
            case $1 in
                --iface) iface=$2 ;;
                --workers) workers=$2 ;;
                --root) root=$2 ;;
            esac
            shift 2
            ;;
        -h | --help) usage ;;
        *) echo "nic.sh: unknown argument: $1" >&2; usage ;;
    esac
done
root=${root%/}
case $iface in
    '' | */* | .*) echo "nic.sh: not an interface name: $iface" >&2; exit 2 ;;
esac

# Online CPUs, one per line, from a list such as "0-3,8,10-11".
online_cpus() {
    local list part
    list=$(cat "$root/sys/devices/system/cpu/online" 2>/dev/null || echo 0)
    IFS=, read -ra part <<<"$list"
    for p in "${part[@]}"; do
        if [[ $p =~ ^([0-9]+)-([0-9]+)$ ]]; then
            seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
        elif [[ $p =~ ^[0-9]+$ ]]; then
            echo "$p"
        fi
    done
}
mapfile -t cpus < <(online_cpus)
[ -n "$workers" ] || workers=${#cpus[@]}
if ! [[ $workers =~ ^[1-9][0-9]*$ ]]; then
    echo "nic.sh: --workers wants a positive number, got $workers" >&2
    exit 2
fi

failed=0
# Runs a command, or prints it in a dry run. A failure is reported and remembered.
run() {
    if [ "$dry" = 1 ]; then
        echo "would run: $*"
        return 0
    fi
    echo "running: $*"
    if ! "$@"; then
        echo "nic.sh: failed: $*" >&2
        return 1
    fi
}

# Writes VALUE ($2) to FILE ($1), shown as the equivalent shell command.
write() {
    if [ "$dry" = 1 ]; then
        echo "would run: echo $2 > $1"
        return 0
    fi
    echo "running: echo $2 > $1"
    if ! echo "$2" 2>/dev/null >"$1"; then
        echo "nic.sh: cannot write $1" >&2
        failed=1
    fi
}

if [ ! -e "$root/sys/class/net/$iface" ]; then
    if [ "$dry" = 1 ]; then
        echo "note: interface $iface not found under $root/sys/class/net; showing the commands anyway"
    else
        echo "nic.sh: interface $iface not found under $root/sys/class/net" >&2
        exit 1
    fi
fi
if ! command -v ethtool >/dev/null 2>&1; then
    if [ "$dry" = 1 ]; then
        echo "note: ethtool is not installed (apt-get install ethtool)"
    else
        echo "nic.sh: ethtool is not installed (apt-get install ethtool)" >&2
        exit 1
    fi
fi

# 1. Offloads: GRO coalesces received UDP of one flow, GSO/tx-udp-segmentation lets one
# sendmsg carry 64 KiB of datagrams (segmented by the NIC or late in the stack), and
# rx-udp-gro-forwarding extends GRO to UDP the host forwards (containers, veth, bridges).
features=(gro on gso on tx-udp-segmentation on rx-udp-gro-forwarding on)
if ! run ethtool -K "$iface" "${features[@]}"; then
    # A driver refuses the whole call when one feature is fixed or unknown: one at a time.
    for ((i = 0; i < ${#features[@]}; i += 2)); do
        run ethtool -K "$iface" "${features[i]}" on || echo "note: $iface cannot turn on ${features[i]}"
    done
fi

# 2. RSS on ports too (s=src IP, d=dst IP, f=src port, n=dst port): the default hash of UDP
# is IPs only on many NICs, so all clients behind one NAT land on one queue.
for proto in udp4 udp6; do
    run ethtool -N "$iface" rx-flow-hash "$proto" sdfn || failed=1
done

# 3. Interrupts of the NIC's queues: names that start with the interface (eth0-TxRx-3), or
# for virtio-net the device's virtioN-input.K/output.K.
patterns=("$iface")
if dev=$(readlink "$root/sys/class/net/$iface/device" 2>/dev/null); then
    dev=${dev##*/}
    [[ $dev == virtio* ]] && patterns+=("$dev")
fi
irqs=()
queues=()
while read -r irq name; do
    for p in "${patterns[@]}"; do
        case $name in
            "$p" | "$p"-config) ;;
            "$p"-* | "$p"@*)
                irqs+=("$irq")
                # Queue number: the digits the name ends with, else the position.
                if [[ $name =~ ([0-9]+)$ ]]; then
                    queues+=("${BASH_REMATCH[1]}")
                else
                    queues+=("${#queues[@]}")
                fi
                ;;
        esac
    done
done < <(awk '$1 ~ /^[0-9]+:$/ { sub(":", "", $1); print $1, $NF }' "$root/proc/interrupts" 2>/dev/null)

if [ "${#irqs[@]}" -eq 0 ]; then
    echo "note: no queue interrupts of $iface in $root/proc/interrupts; affinity left alone"
else
    # irqbalance rewrites affinities every few seconds: stop it before setting them.
    if [ -n "$root" ]; then
        echo "note: irqbalance not looked for under --root; if it runs, stop it: systemctl disable --now irqbalance"
    elif pgrep -x irqbalance >/dev/null 2>&1; then
        if command -v systemctl >/dev/null 2>&1; then
            run systemctl disable --now irqbalance || failed=1
        else
            echo "note: irqbalance is running and will undo these affinities: stop it"
        fi
    fi
    for i in "${!irqs[@]}"; do
        cpu=${cpus[$((queues[i] % workers % ${#cpus[@]}))]}
        write "$root/proc/irq/${irqs[i]}/smp_affinity_list" "$cpu"
    done
fi
exit "$failed"
