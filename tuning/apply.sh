#!/usr/bin/env bash
# Applies tuning/sysctl.conf to the running kernel and persists it in
# /etc/sysctl.d/90-quelay.conf; records the values it replaces so --revert can put them back.
#
#   apply.sh [--root DIR] [--dry-run] [--revert]
#
# --root DIR  read and write every file under DIR (default /): DIR/proc/sys/...,
#             DIR/etc/sysctl.d/90-quelay.conf, DIR/var/lib/quelay/sysctl.previous
# --dry-run   print what would change, change nothing
# --revert    restore the recorded previous values, remove the installed file
#
# Idempotent: a key already at its value is left alone, a `minimum` key above its floor is
# never lowered, and the first value ever recorded for a key is the one --revert restores.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

usage() {
    echo "usage: apply.sh [--root DIR] [--dry-run] [--revert]" >&2
    exit 2
}

root=/
dry=0
revert=0
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
        --dry-run) dry=1; shift ;;
        --revert) revert=1; shift ;;
        -h | --help) usage ;;
        *) echo "apply.sh: unknown argument: $1" >&2; usage ;;
    esac
done

root=${root%/}
conf=$here/sysctl.conf
installed=$root/etc/sysctl.d/90-quelay.conf
previous=$root/var/lib/quelay/sysctl.previous
if [ ! -d "$root/proc/sys" ]; then
    echo "apply.sh: $root/proc/sys does not exist" >&2
    exit 1
fi
failed=0

# Writes VALUE ($2) into the sysctl file PATH ($1), or says it would.
set_value() {
    local path=$1 value=$2 key=$3 have=$4
    if [ "$dry" = 1 ]; then
        echo "would set $key: have $have, set $value"
    elif printf '%s\n' "$value" 2>/dev/null >"$path"; then
        echo "set $key: was $have, now $value"
    else
        echo "cannot set $key to $value (root needed?)" >&2
        failed=1
    fi
}

# Replaces FILE ($1) with the text on stdin, unless it already holds exactly that text.
replace_file() {
    local file=$1 tmp
    tmp=$(mktemp "${file}.XXXXXX")
    cat >"$tmp"
    if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    chmod 644 "$tmp"
    mv -f "$tmp" "$file"
}

if [ "$revert" = 1 ]; then
    if [ -f "$previous" ]; then
        while IFS= read -r line || [ -n "$line" ]; do
            case $line in '#'* | '') continue ;; esac
            key=$(quelay_words "${line%%=*}")
            value=$(quelay_words "${line#*=}")
            path=$(quelay_proc_path "$root" "$key")
            if [ ! -f "$path" ]; then
                echo "$key: not in this kernel, nothing to restore"
                continue
            fi
            have=$(quelay_words "$(cat "$path")")
            if [ "$have" = "$value" ]; then
                echo "$key: already $value"
            else
                set_value "$path" "$value" "$key" "$have"
            fi
        done <"$previous"
    else
        echo "no recorded values in $previous: nothing to restore"
    fi
    for f in "$installed" "$previous"; do
        [ -e "$f" ] || continue
        if [ "$dry" = 1 ]; then
            echo "would remove $f"
        else
            rm -f "$f"
            echo "removed $f"
        fi
    done
    exit "$failed"
fi

settings=$(quelay_settings "$conf")
persist="# Written by quelay's tuning/apply.sh from tuning/sysctl.conf, which says why.
# Undo with tuning/apply.sh --revert.
"
record=""
changes=()
while read -r mode key want; do
    path=$(quelay_proc_path "$root" "$key")
    if [ ! -f "$path" ]; then
        echo "$key: not in this kernel, skipped"
        continue
    fi
    have=$(quelay_words "$(cat "$path")")
    target=$(quelay_target "$mode" "$have" "$want")
    persist+="$key = $target"$'\n'
    if [ "$have" = "$target" ]; then
        echo "$key: already $have"
        continue
    fi
    # The first value seen for a key is the one to restore; later runs do not replace it.
    if ! { [ -f "$previous" ] && grep -q "^${key//./\\.} = " "$previous"; }; then
        record+="$key = $have"$'\n'
    fi
    changes+=("$path|$target|$key|$have")
done <<<"$settings"

# Record before changing anything, so an interrupted run can still be reverted.
if [ -n "$record" ]; then
    if [ "$dry" = 1 ]; then
        echo "would record the replaced values in $previous"
    else
        mkdir -p "$(dirname "$previous")"
        if [ ! -f "$previous" ]; then
            echo "# Values replaced by quelay's tuning/apply.sh; apply.sh --revert restores them." >"$previous"
        fi
        printf '%s' "$record" >>"$previous"
        echo "recorded the replaced values in $previous"
    fi
fi
for c in "${changes[@]+"${changes[@]}"}"; do
    IFS='|' read -r path target key have <<<"$c"
    set_value "$path" "$target" "$key" "$have"
done

if [ "$dry" = 1 ]; then
    if ! { [ -f "$installed" ] && [ "$(cat "$installed")"$'\n' = "$persist" ]; }; then
        echo "would write $installed"
    fi
else
    mkdir -p "$(dirname "$installed")"
    if printf '%s' "$persist" | replace_file "$installed"; then
        echo "wrote $installed"
    else
        echo "$installed: up to date"
    fi
fi
exit "$failed"
