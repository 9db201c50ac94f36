#!/usr/bin/env bash
# Compares the running kernel's values with tuning/sysctl.conf.
#
#   check.sh [--root DIR]
#
# Prints each drift as `key: have X, want Y` (`want Y or more` for a `minimum` key, where a
# larger value is fine). Exits 1 on drift, 0 when every setting is in place. A key this
# kernel does not have is reported and not counted.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

usage() {
    echo "usage: check.sh [--root DIR]" >&2
    exit 2
}

root=/
while [ $# -gt 0 ]; do
    case $1 in
        --root)
            [ $# -ge 2 ] || usage
            root=$2
            shift 2
            ;;
        --root=*)
            root=${1#--root=}
            shift
            ;;
        -h | --help) usage ;;
        *) echo "check.sh: unknown argument: $1" >&2; usage ;;
    esac
done
root=${root%/}
if [ ! -d "$root/proc/sys" ]; then
    echo "check.sh: $root/proc/sys does not exist" >&2
    exit 1
fi

settings=$(quelay_settings "$here/sysctl.conf")
total=0
drift=0
while read -r mode key want; do
    path=$(quelay_proc_path "$root" "$key")
    if [ ! -f "$path" ]; then
        echo "$key: not in this kernel (skipped)"
        continue
    fi
    total=$((total + 1))
    have=$(quelay_words "$(cat "$path")")
    if ! quelay_satisfied "$mode" "$have" "$want"; then
        drift=$((drift + 1))
        if [ "$mode" = minimum ]; then
            echo "$key: have $have, want $want or more"
        else
            echo "$key: have $have, want $want"
        fi
    fi
done <<<"$settings"

if [ ! -f "$root/etc/sysctl.d/90-quelay.conf" ]; then
    echo "note: $root/etc/sysctl.d/90-quelay.conf is missing: values are not kept across reboots"
fi
if [ "$drift" -gt 0 ]; then
    echo "$drift of $total settings drift; tuning/apply.sh sets them"
    exit 1
fi
echo "all $total settings in place"
