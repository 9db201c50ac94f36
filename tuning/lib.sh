# shellcheck shell=bash
# Helpers shared by apply.sh and check.sh: reading tuning/sysctl.conf and comparing values.
# Sourced, not run.

# Prints one line per setting of the conf file $1: "MODE KEY VALUE", MODE being `minimum`
# (a `# check: minimum` line stands just above the key) or `exact`; VALUE's numbers are
# separated by single spaces.
quelay_settings() {
    local conf=$1 mode=exact line key value
    while IFS= read -r line || [ -n "$line" ]; do
        line=$(quelay_words "$line")
        case $line in
            '# check: minimum') mode=minimum ;;
            '#'* | ';'* | '') ;;
            *=*)
                key=$(quelay_words "${line%%=*}")
                key=${key#-}
                value=$(quelay_words "${line#*=}")
                printf '%s %s %s\n' "$mode" "$key" "$value"
                mode=exact
                ;;
            *)
                printf "%s: not a 'key = value' line: %s\\n" "$conf" "$line" >&2
                return 1
                ;;
        esac
    done <"$conf"
}

# Collapses runs of blanks (the tabs of /proc/sys files included) to single spaces and trims.
quelay_words() {
    local -a w
    read -ra w <<<"$1"
    printf '%s' "${w[*]}"
}

# The /proc/sys file of KEY under ROOT ($1: root without trailing slash, $2: key).
quelay_proc_path() {
    printf '%s/proc/sys/%s' "$1" "${2//.//}"
}

# True when the non-negative decimal integer $1 is at least $2 (any length).
quelay_num_ge() {
    local a=$1 b=$2
    [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ ]] || return 1
    a=${a#"${a%%[!0]*}"}
    b=${b#"${b%%[!0]*}"}
    if [ "${#a}" -ne "${#b}" ]; then
        [ "${#a}" -gt "${#b}" ]
        return
    fi
    [[ $a > $b || $a == "$b" ]]
}

# The value to hold for MODE ($1) when the current value is $2 and the conf says $3: the
# conf's value for `exact`; for `minimum`, each number raised to the conf's where lower.
quelay_target() {
    local mode=$1 i
    local -a now_v want_v out
    read -ra now_v <<<"$2"
    read -ra want_v <<<"$3"
    if [ "$mode" != minimum ] || [ "${#now_v[@]}" -ne "${#want_v[@]}" ]; then
        printf '%s' "${want_v[*]}"
        return
    fi
    for i in "${!want_v[@]}"; do
        if quelay_num_ge "${now_v[$i]}" "${want_v[$i]}"; then
            out+=("${now_v[$i]}")
        else
            out+=("${want_v[$i]}")
        fi
    done
    printf '%s' "${out[*]}"
}

# True when the current value $2 satisfies the conf's value $3 under MODE $1.
quelay_satisfied() {
    [ "$(quelay_words "$2")" = "$(quelay_target "$1" "$2" "$3")" ]
}
