# shellcheck shell=bash disable=SC2034
# Shared helpers of tuning/check and tuning/apply (sourced, never run).
#
# Everything here only READS the machine. Paths go through three roots so the
# tests can point the scripts at a fake /proc, /sys and /etc:
#   STARCITE_TUNING_PROC (default /proc), STARCITE_TUNING_SYS (default /sys),
#   STARCITE_TUNING_ETC (default /etc).
# Nothing here may make a script exit: every probe returns a status instead.

TN_PROC="${STARCITE_TUNING_PROC:-/proc}"
TN_SYS="${STARCITE_TUNING_SYS:-/sys}"
TN_ETC="${STARCITE_TUNING_ETC:-/etc}"

# Wanted values that are not sysctls (tuning/limits.d and the unit say the same).
TN_WANT_NOFILE=1048576
TN_WANT_NPROC=65536
TN_WANT_KERNEL_MAJOR=5
TN_WANT_KERNEL_MINOR=19
TN_DEFAULT_DATA_DIR=/var/lib/starcite

# Runs a command with a time bound when coreutils' timeout exists.
tn_timeout() {
    local secs="$1"
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout "$secs" "$@"
    else
        "$@"
    fi
}

# First line of a file; status 1 if it cannot be read.
tn_read() {
    local line
    [ -r "$1" ] || return 1
    IFS= read -r line <"$1" 2>/dev/null || [ -n "$line" ] || return 1
    printf '%s\n' "$line"
}

# Collapses runs of blanks/tabs to one space and trims.
tn_squash() {
    # shellcheck disable=SC2086
    set -- $1
    printf '%s\n' "$*"
}

# The bracketed choice of a sysfs selector like "always [madvise] never".
tn_selected() {
    local w
    for w in $1; do
        case "$w" in
        \[*\]) w="${w#[}"; printf '%s\n' "${w%]}"; return 0 ;;
        esac
    done
    return 1
}

# Whether word $2 is one of the (bracketed or not) choices in $1.
tn_has_choice() {
    local w
    for w in $1; do
        w="${w#[}"
        w="${w%]}"
        [ "$w" = "$2" ] && return 0
    done
    return 1
}

# Kernel version as "MAJOR MINOR" from uname -r (or the proc root).
tn_kernel_release() {
    tn_read "$TN_PROC/sys/kernel/osrelease" 2>/dev/null || uname -r 2>/dev/null
}

tn_kernel_ge() { # MAJOR MINOR
    local rel maj min
    rel="$(tn_kernel_release)" || return 2
    maj="${rel%%.*}"
    min="${rel#*.}"
    min="${min%%[!0-9]*}"
    case "$maj" in '' | *[!0-9]*) return 2 ;; esac
    case "$min" in '' | *[!0-9]*) return 2 ;; esac
    [ "$maj" -gt "$1" ] && return 0
    [ "$maj" -eq "$1" ] && [ "$min" -ge "$2" ] && return 0
    return 1
}

tn_is_uint() {
    case "$1" in '' | *[!0-9]*) return 1 ;; esac
    return 0
}

# ---------------------------------------------------------------------------
# sysctl.d file
# ---------------------------------------------------------------------------

tn_sysctl_conf() {
    local here="$1"
    printf '%s\n' "$here/sysctl.d/60-starcite.conf"
}

# Prints "key<TAB>value<TAB>optional(0|1)<TAB>reason" for every key of the file.
tn_sysctl_entries() {
    local line comment="" key value opt
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
        '') comment="" ;;
        '#'* | ';'*)
            line="${line#[#;]}"
            line="${line# }"
            comment="${line%.}"
            ;;
        *=*)
            key="$(tn_squash "${line%%=*}")"
            value="$(tn_squash "${line#*=}")"
            opt=0
            case "$key" in -*) opt=1; key="${key#-}" ;; esac
            printf '%s\t%s\t%s\t%s\n' "$key" "$value" "$opt" "$comment"
            comment=""
            ;;
        esac
    done <"$1"
}

# How the current value is compared with the wanted one:
#   min   every field >= wanted (bigger queues/buffers/caps are fine)
#   max   every field <= wanted (swappiness, timeouts)
#   range low <= wanted low and high >= wanted high (port range at least as wide)
#   bytes 0 < value <= wanted (0 means the *_ratio twin is in force instead)
#   eq    exactly the wanted value
tn_sysctl_mode() {
    case "$1" in
    net.core.somaxconn | net.ipv4.tcp_max_syn_backlog | net.core.netdev_max_backlog | \
        net.core.rmem_max | net.core.wmem_max | net.ipv4.tcp_rmem | net.ipv4.tcp_wmem | \
        fs.file-max | fs.nr_open) echo min ;;
    vm.swappiness | net.ipv4.tcp_fin_timeout | vm.dirty_expire_centisecs | \
        vm.dirty_writeback_centisecs) echo max ;;
    net.ipv4.ip_local_port_range) echo range ;;
    vm.dirty_bytes | vm.dirty_background_bytes) echo bytes ;;
    *) echo eq ;;
    esac
}

# How a wanted value reads next to its mode ("at least 65535").
tn_mode_words() { # MODE WANTED
    case "$1" in
    min) printf 'at least %s\n' "$2" ;;
    max) printf 'at most %s\n' "$2" ;;
    range) printf '%s or wider\n' "$2" ;;
    bytes) printf 'between 1 and %s\n' "$2" ;;
    *) printf '%s\n' "$2" ;;
    esac
}

# Status 0 if CURRENT satisfies WANTED under MODE, 1 if not.
tn_sysctl_ok() { # MODE CURRENT WANTED
    local mode="$1" cur wan c w i
    # shellcheck disable=SC2206
    cur=($2)
    # shellcheck disable=SC2206
    wan=($3)
    [ "${#cur[@]}" -eq "${#wan[@]}" ] || return 1
    case "$mode" in
    range)
        [ "${#cur[@]}" -eq 2 ] || return 1
        tn_is_uint "${cur[0]}" && tn_is_uint "${cur[1]}" || return 1
        [ "${cur[0]}" -le "${wan[0]}" ] && [ "${cur[1]}" -ge "${wan[1]}" ]
        return
        ;;
    eq)
        [ "${cur[*]}" = "${wan[*]}" ]
        return
        ;;
    esac
    for ((i = 0; i < ${#wan[@]}; i++)); do
        c="${cur[$i]}"
        w="${wan[$i]}"
        tn_is_uint "$c" && tn_is_uint "$w" || return 1
        case "$mode" in
        min) [ "$c" -ge "$w" ] || return 1 ;;
        max) [ "$c" -le "$w" ] || return 1 ;;
        bytes) [ "$c" -gt 0 ] && [ "$c" -le "$w" ] || return 1 ;;
        esac
    done
    return 0
}

tn_sysctl_path() {
    printf '%s/sys/%s\n' "$TN_PROC" "$(printf '%s' "$1" | tr . /)"
}

# ---------------------------------------------------------------------------
# Data directory -> filesystem -> block devices
# ---------------------------------------------------------------------------

# Fills DD_DIR (the data dir asked for), DD_PATH (it, or its nearest existing
# ancestor), DD_MISSING (1 if DD_PATH is an ancestor), DD_FSTYPE, DD_SOURCE,
# DD_OPTIONS, DD_MAJMIN, DD_TARGET. Status 1 if the mount could not be found.
tn_probe_data_dir() {
    local p line mp majmin fstype source opts best="" n
    DD_DIR="$1"
    DD_MISSING=0
    DD_FSTYPE=""
    DD_SOURCE=""
    DD_OPTIONS=""
    DD_MAJMIN=""
    DD_TARGET=""
    case "$1" in /*) p="$1" ;; *) p="$(pwd)/$1" ;; esac
    while [ ! -e "$p" ] && [ "$p" != "/" ] && [ -n "$p" ]; do
        p="$(dirname "$p")"
        DD_MISSING=1
    done
    [ -n "$p" ] || p=/
    p="$(cd "$p" 2>/dev/null && pwd -P)" || p="$1"
    DD_PATH="$p"

    if command -v findmnt >/dev/null 2>&1; then
        line="$(tn_timeout 5 findmnt -n -r -o TARGET,MAJ:MIN,FSTYPE,SOURCE,OPTIONS -T "$p" 2>/dev/null | head -n 1)"
        if [ -n "$line" ]; then
            # findmnt -r escapes blanks as \x20, so fields split on spaces.
            read -r DD_TARGET DD_MAJMIN DD_FSTYPE DD_SOURCE DD_OPTIONS <<EOF
$line
EOF
            return 0
        fi
    fi
    # Fallback: the longest mount point of mountinfo that contains the path.
    [ -r "$TN_PROC/self/mountinfo" ] || return 1
    while IFS= read -r line; do
        # id parent maj:min root mountpoint options [optional...] - fstype source superopts
        local -a f
        read -r -a f <<<"$line"
        [ "${#f[@]}" -ge 9 ] || continue
        majmin="${f[2]}"
        mp="$(printf '%b' "${f[4]}")" # mountinfo escapes blanks as \040
        opts="${f[5]}"
        local i=6
        while [ "$i" -lt "${#f[@]}" ] && [ "${f[$i]}" != "-" ]; do i=$((i + 1)); done
        [ $((i + 2)) -lt "${#f[@]}" ] || continue
        fstype="${f[$((i + 1))]}"
        source="${f[$((i + 2))]}"
        opts="$opts,${f[$((i + 3))]:-}"
        case "$p/" in
        "${mp%/}/"*)
            n="${#mp}"
            if [ -z "$best" ] || [ "$n" -ge "$best" ]; then
                best="$n"
                DD_TARGET="$mp"
                DD_MAJMIN="$majmin"
                DD_FSTYPE="$fstype"
                DD_SOURCE="$source"
                DD_OPTIONS="$opts"
            fi
            ;;
        esac
    done <"$TN_PROC/self/mountinfo"
    [ -n "$best" ]
}

# The whole disks (names under /sys/block) behind a block device given as
# MAJ:MIN: a partition maps to its disk, a device-mapper/md device to the disks
# under it. Prints one name a line; nothing if it is not a block device.
tn_disks_of_majmin() {
    local dev
    dev="$(readlink -f "$TN_SYS/dev/block/$1" 2>/dev/null)" || return 1
    [ -n "$dev" ] && [ -d "$dev" ] || return 1
    tn_disks_of_sysdev "$dev" 0 | sort -u
}

tn_disks_of_sysdev() { # SYSFS_DIR DEPTH
    local dev="$1" depth="$2" s found=0
    [ "$depth" -lt 8 ] || return 0
    if [ -f "$dev/partition" ]; then
        dev="$(dirname "$dev")"
    fi
    if [ -d "$dev/slaves" ]; then
        for s in "$dev"/slaves/*; do
            [ -e "$s" ] || continue
            found=1
            tn_disks_of_sysdev "$(readlink -f "$s")" $((depth + 1))
        done
    fi
    if [ "$found" -eq 0 ]; then
        basename "$dev"
    fi
}

# Block device name (under /sys/class/block) for a /dev path, or nothing.
tn_blockname_of_source() {
    local real
    case "$1" in /dev/*) ;; *) return 1 ;; esac
    real="$(readlink -f "$1" 2>/dev/null)" || return 1
    [ -e "$TN_SYS/class/block/$(basename "$real")" ] || return 1
    basename "$real"
}

# Disks holding the data dir (after tn_probe_data_dir). Status 1 if none found.
tn_data_disks() {
    local out="" name mm
    if [ -n "$DD_MAJMIN" ] && [ "${DD_MAJMIN%%:*}" != "0" ]; then
        out="$(tn_disks_of_majmin "$DD_MAJMIN")"
    fi
    if [ -z "$out" ]; then
        # btrfs and friends report an anonymous 0:N device: use the source path.
        name="$(tn_blockname_of_source "$DD_SOURCE")" || return 1
        mm="$(tn_read "$TN_SYS/class/block/$name/dev")" || return 1
        out="$(tn_disks_of_majmin "$mm")"
    fi
    [ -n "$out" ] || return 1
    printf '%s\n' "$out"
}

# The scheduler a disk should have: none for non-rotational (NVMe, SSD,
# virtual disks backed by flash), mq-deadline for spinning disks.
tn_wanted_scheduler() { # DISK
    local rot
    rot="$(tn_read "$TN_SYS/block/$1/queue/rotational")" || rot=0
    if [ "$rot" = "1" ]; then echo mq-deadline; else echo none; fi
}

# Whether the current scheduler is acceptable for this disk.
tn_scheduler_ok() { # DISK CURRENT
    local rot
    rot="$(tn_read "$TN_SYS/block/$1/queue/rotational")" || rot=0
    case "$2" in
    none | mq-deadline) [ "$rot" = "1" ] && [ "$2" = "none" ] && return 1; return 0 ;;
    *) return 1 ;;
    esac
}
