#!/usr/bin/env bash
# Lab of real systemd nodes for the Ansible roles: systemd-nspawn containers
# booting systemd as PID 1, on a bridge inside a network namespace this script
# creates. Sourced by ansible/lab/run; also usable by hand:
#
#   ansible/lab/lab.sh up 3        # rootfs (cached), netns, nodes n1..n3
#   ansible/lab/lab.sh ssh n1      # a shell on a node
#   ansible/lab/lab.sh down        # tear everything down
#
# Needs root, debootstrap and systemd-container (Debian 12). Everything it
# starts is recorded under $LAB_STATE and torn down by PID and mount point.
set -euo pipefail

LAB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The debootstrap'd rootfs is built once and reused (about 2 minutes).
LAB_CACHE="${LAB_CACHE:-/var/cache/starcite-lab}"
# Per-run state: overlays, node data dirs ("persistent volumes"), keys, logs.
# Must not be on overlayfs or tmpfs (overlay upper dirs, real fdatasync).
LAB_STATE="${LAB_STATE:-/var/tmp/starcite-lab}"
LAB_NS="${LAB_NS:-stlab}"
LAB_BR="${LAB_BR:-stlab0}"
# Addresses exist only inside $LAB_NS: the bridge is .1, node nK is .(10+K).
LAB_NET="${LAB_NET:-10.77.0}"
LAB_SUITE=bookworm
LAB_MIRROR="${LAB_MIRROR:-http://deb.debian.org/debian}"
LAB_PACKAGES=systemd,systemd-sysv,dbus,openssh-server,python3,iproute2,procps,curl,ca-certificates,sudo
# Bump when the rootfs customisation below changes (invalidates the cache).
LAB_ROOTFS_REV=1
ROOTFS="$LAB_CACHE/rootfs-$LAB_SUITE-r$LAB_ROOTFS_REV"

log() { printf '[lab %(%H:%M:%S)T] %s\n' -1 "$*" >&2 || true; }
die() { log "error: $*"; exit 1; }

in_ns() { nsenter --net="/run/netns/$LAB_NS" "$@"; }
node_ip() { echo "$LAB_NET.$((10 + ${1#n}))"; }

need_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v ssh-keygen >/dev/null || missing+=(openssh-client)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
            { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; }
    fi
}

# --- rootfs (shared, read-only lower layer of every node) -------------------
rootfs() {
    [ -f "$ROOTFS/.lab-ready" ] && return 0
    need_tools
    mkdir -p "$LAB_CACHE"
    local tmp="$ROOTFS.tmp"
    rm -rf "$tmp"
    log "debootstrap $LAB_SUITE minbase into $tmp (once; cached)"
    timeout 900 debootstrap --variant=minbase --include="$LAB_PACKAGES" \
        "$LAB_SUITE" "$tmp" "$LAB_MIRROR" >"$LAB_CACHE/debootstrap.log" 2>&1 ||
        { tail -20 "$LAB_CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
    # Static addresses per node come from a .network file in each node's
    # overlay; networkd applies it at boot.
    systemctl --root="$tmp" enable systemd-networkd.service >/dev/null 2>&1
    systemctl --root="$tmp" mask systemd-resolved.service console-getty.service \
        getty@tty1.service apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
    chroot "$tmp" ssh-keygen -A >/dev/null
    cat >"$tmp/etc/ssh/sshd_config.d/lab.conf" <<'EOF'
UseDNS no
PermitRootLogin prohibit-password
PasswordAuthentication no
EOF
    : >"$tmp/etc/machine-id"
    rm -rf "$tmp/var/cache/apt/archives/"*.deb
    touch "$tmp/.lab-ready"
    mv "$tmp" "$ROOTFS"
    log "rootfs ready: $ROOTFS ($(du -sh "$ROOTFS" | cut -f1))"
}

# --- network namespace with a bridge ------------------------------------------
net_up() {
    mkdir -p "$LAB_STATE"
    if [ ! -e "/run/netns/$LAB_NS" ]; then
        ip netns add "$LAB_NS"
        echo "$LAB_NS" >"$LAB_STATE/netns"
    fi
    ip -n "$LAB_NS" link set lo up
    if ! ip -n "$LAB_NS" link show "$LAB_BR" >/dev/null 2>&1; then
        ip -n "$LAB_NS" link add "$LAB_BR" type bridge
        ip -n "$LAB_NS" addr add "$LAB_NET.1/24" dev "$LAB_BR"
        ip -n "$LAB_NS" link set "$LAB_BR" up
    fi
    # nspawn keeps per-machine state there; a tmpfs keeps it off the host's /run.
    if ! mountpoint -q /run/systemd/nspawn; then
        mkdir -p /run/systemd/nspawn
        mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
        echo /run/systemd/nspawn >"$LAB_STATE/nspawn-tmpfs"
    fi
    # One SSH key per run for the controller (ansible) to reach the nodes.
    mkdir -p "$LAB_STATE/ssh"
    [ -f "$LAB_STATE/ssh/id_ed25519" ] ||
        ssh-keygen -q -t ed25519 -N '' -C starcite-lab -f "$LAB_STATE/ssh/id_ed25519"
}

# --- nodes ------------------------------------------------------------------
# node_up NAME [fresh]: mounts NAME's overlay and boots it (restart loop for
# reboots). With "fresh", the node's overlay and data dir start empty (a new
# machine with an empty disk, same identity and address).
node_up() {
    local name=$1 fresh=${2:-} d="$LAB_STATE/nodes/$1"
    local ip
    ip=$(node_ip "$name")
    if [ "$fresh" = fresh ]; then
        rm -rf "$d" "$LAB_STATE/data/$name"
    fi
    mkdir -p "$d/upper" "$d/work" "$d/merged" "$LAB_STATE/data/$name" "$LAB_STATE/archive"
    # The fs archive directory shared by every node (as NFS would be).
    chmod 0777 "$LAB_STATE/archive"
    if ! mountpoint -q "$d/merged"; then
        mount -t overlay overlay \
            -o "lowerdir=$ROOTFS,upperdir=$d/upper,workdir=$d/work" "$d/merged"
    fi
    local m="$d/merged"
    echo "$name" >"$m/etc/hostname"
    printf '127.0.0.1 localhost\n%s %s\n' "$ip" "$name" >"$m/etc/hosts"
    mkdir -p "$m/etc/systemd/network" "$m/root/.ssh"
    cat >"$m/etc/systemd/network/10-lab.network" <<EOF
[Match]
Name=host0

[Network]
Address=$ip/24
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
    install -m 0600 "$LAB_STATE/ssh/id_ed25519.pub" "$m/root/.ssh/authorized_keys"
    chmod 0700 "$m/root/.ssh"
    rm -f "$d/stop"
    # The loop reboots the container when systemd asks for a reboot (exit 133).
    setsid bash "$LAB_DIR/lab.sh" _loop "$name" >>"$d/console.log" 2>&1 </dev/null &
    echo $! >"$d/loop.pid"
}

# Runs in the background: one nspawn per boot of NAME.
_loop() {
    local name=$1 d="$LAB_STATE/nodes/$1" rc
    while [ ! -e "$d/stop" ]; do
        nsenter --net="/run/netns/$LAB_NS" systemd-nspawn --quiet --boot \
            --register=no --keep-unit --console=passive \
            --directory="$d/merged" --machine="$name" --hostname="$name" \
            --network-bridge="$LAB_BR" \
            --bind="$LAB_STATE/data/$name:/var/lib/starcite" \
            --bind="$LAB_STATE/archive:/srv/starcite-archive" &
        echo $! >"$d/nspawn.pid"
        rc=0
        wait $! || rc=$?
        echo "[lab loop] nspawn $name exited $rc at $(date -u +%FT%TZ)"
        [ "$rc" = 133 ] || break
    done
    rm -f "$d/nspawn.pid"
}

# The container's init as seen from the host (child of nspawn), if running.
node_leader() {
    local p
    p=$(cat "$LAB_STATE/nodes/$1/nspawn.pid" 2>/dev/null) || return 1
    pgrep -P "$p" | head -1
}

ssh_node() {
    local name=$1
    shift
    in_ns ssh -q -i "$LAB_STATE/ssh/id_ed25519" -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 -o BatchMode=yes \
        "root@$(node_ip "$name")" "$@"
}

# wait_ssh NAME SECONDS: until the node runs sshd and systemd finished booting.
wait_ssh() {
    local name=$1 deadline=$((SECONDS + $2))
    while [ $SECONDS -lt $deadline ]; do
        if ssh_node "$name" true 2>/dev/null; then
            ssh_node "$name" 'systemctl is-system-running --wait >/dev/null 2>&1 || true'
            return 0
        fi
        sleep 1
    done
    log "$name: no SSH within $2 s; console:"
    tail -20 "$LAB_STATE/nodes/$name/console.log" >&2 || true
    return 1
}

# node_down NAME: stop the node (clean poweroff, then by PID), unmount.
node_down() {
    local name=$1 d="$LAB_STATE/nodes/$1" p leader lp i
    [ -d "$d" ] || return 0
    touch "$d/stop"
    p=$(cat "$d/nspawn.pid" 2>/dev/null || true)
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
        leader=$(pgrep -P "$p" | head -1 || true)
        kill -TERM "$p" 2>/dev/null || true # nspawn: clean poweroff of the container
        for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$p" 2>/dev/null; then
            [ -n "$leader" ] && kill -KILL "$leader" 2>/dev/null || true
            kill -KILL "$p" 2>/dev/null || true
        fi
    fi
    lp=$(cat "$d/loop.pid" 2>/dev/null || true)
    if [ -n "$lp" ]; then
        for i in $(seq 1 50); do kill -0 "$lp" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$lp" 2>/dev/null || true
    fi
    rm -f "$d/loop.pid" "$d/nspawn.pid"
    if mountpoint -q "$d/merged"; then
        umount "$d/merged" 2>/dev/null || umount -l "$d/merged"
    fi
}

# down: every node, the namespace, the tmpfs; leaves $LAB_STATE for inspection.
down() {
    local d s
    # Ansible's persistent SSH connections (ControlPersist) into the lab.
    for s in "$LAB_STATE"/cp/*; do
        [ -S "$s" ] && ssh -o ControlPath="$s" -O exit lab 2>/dev/null || true
    done
    for d in "$LAB_STATE"/nodes/*/; do
        [ -d "$d" ] && node_down "$(basename "$d")"
    done
    if [ -f "$LAB_STATE/netns" ]; then
        ip netns del "$(cat "$LAB_STATE/netns")" 2>/dev/null || true
        rm -f "$LAB_STATE/netns"
    fi
    if [ -f "$LAB_STATE/nspawn-tmpfs" ]; then
        umount /run/systemd/nspawn 2>/dev/null || umount -l /run/systemd/nspawn || true
        rm -f "$LAB_STATE/nspawn-tmpfs"
    fi
}

# up N: rootfs, network, nodes n1..nN booted and answering SSH.
up() {
    local n=${1:-3} i
    rootfs
    net_up
    for i in $(seq 1 "$n"); do node_up "n$i" "${2:-}"; done
    for i in $(seq 1 "$n"); do wait_ssh "n$i" 120; done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    cmd=${1:-}
    shift || true
    case "$cmd" in
    rootfs | net_up | node_up | node_down | down | up | wait_ssh | _loop) "$cmd" "$@" ;;
    ssh) ssh_node "$@" ;;
    *) echo "usage: $0 rootfs|up N|down|node_up NAME [fresh]|node_down NAME|ssh NAME [cmd]" >&2; exit 2 ;;
    esac
    exit $?
fi
