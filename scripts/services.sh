#!/usr/bin/env bash
# Bring up, inspect or stop the real components Kiln drives and is tested
# against: Docker Engine, an OCI registry on loopback, a zfs-fuse pool on a
# file, QEMU (+KVM when usable), binfmt emulation, skopeo.
#
#   bash scripts/services.sh up       install what is missing, start what is not running
#   bash scripts/services.sh status   say where each one is
#   bash scripts/services.sh down     stop exactly what `up` started (by pid)
#   bash scripts/services.sh registry-gc   free the blobs no manifest references
#                                      (after `kiln gc --registry`)
#   bash scripts/services.sh registry-up|registry-down   the registry alone
#
# Running `up` twice is harmless. State lives under $KILN_STATE_DIR (.kiln).
#
# `up` exits non-zero, printing the component's log, when a component it
# was asked to start did not come up. Docker and the registry stop it at
# once (nothing runs without them); zfs-fuse is also recorded in
# .kiln/run/zfs.unavailable and `up` brings up the rest first, so that a
# local run can go on without ZFS (its tests print SKIPPED with that
# reason) while CI (KILN_REQUIRE_ALL=1, scripts/test.sh) stops there.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${KILN_STATE_DIR:-$ROOT/.kiln}
RUN=$STATE/run
LOG=$STATE/log
REGISTRY_ADDR=${KILN_REGISTRY_ADDR:-127.0.0.1:5000}
POOL=${KILN_ZFS_POOL:-kiln}
mkdir -p "$RUN" "$LOG"

say() { printf '%s\n' "$*"; }
die() { printf 'services: %s\n' "$*" >&2; exit 1; }
# Components asked for that did not come up: `up` exits 1 naming them.
DOWN=()

# pid file written only for what this script started.
started_pid() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

wait_for() { # seconds, description, command...
    local secs=$1 what=$2; shift 2
    local i
    for ((i = 0; i < secs * 4; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    say "$what: no answer within ${secs}s"
    return 1
}

PACKAGES=(docker.io docker-registry zfs-fuse qemu-system-x86 qemu-user-static
    binfmt-support skopeo busybox-static libc6-dev debootstrap curl iproute2 zstd rsync
    openssh-server sudo
    shellcheck apache2-utils openssl dropbear-bin socat signify-openbsd nginx)
# Without their Recommends (opam's would bring ocaml, darcs and mercurial):
# tests/recipe_git_repos.rs runs the recipes' `opam repo add` steps with it.
LEAN_PACKAGES=(opam)

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    # qemu-img must come from the same QEMU release as qemu-system: a newer
    # backported qemu-utils conflicts with Debian's qemu-system-common.
    local sys_ver utils_ver
    sys_ver=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
    utils_ver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    if [ -z "$sys_ver" ] || [ "$sys_ver" != "$utils_ver" ]; then
        missing+=("qemu-utils/$codename")
    fi
    local lean=()
    for p in "${LEAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || lean+=("$p")
    done
    export DEBIAN_FRONTEND=noninteractive
    if [ ${#lean[@]} -gt 0 ]; then
        say "packages: installing ${lean[*]} (no recommends)"
        apt-get install -y -q --no-install-recommends "${lean[@]}" >"$LOG/apt-lean.log" 2>&1 ||
            { apt-get update -q >>"$LOG/apt-lean.log" 2>&1 || true
              apt-get install -y -q --no-install-recommends "${lean[@]}" >>"$LOG/apt-lean.log" 2>&1; } ||
            { tail -20 "$LOG/apt-lean.log" >&2; die "apt-get install failed: see $LOG/apt-lean.log"; }
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    say "packages: installing ${missing[*]}"
    if ! apt-get install -y -q --allow-downgrades "${missing[@]}" >"$LOG/apt.log" 2>&1; then
        apt-get update -q >>"$LOG/apt.log" 2>&1 || true
        apt-get install -y -q --allow-downgrades "${missing[@]}" >>"$LOG/apt.log" 2>&1 ||
            { tail -20 "$LOG/apt.log" >&2; die "apt-get install failed: see $LOG/apt.log"; }
    fi
}

docker_up() {
    if docker version >/dev/null 2>&1; then
        say "docker: running, $(docker version -f '{{.Server.Version}} API {{.Server.APIVersion}}') at unix:///var/run/docker.sock"
        return 0
    fi
    say "docker: starting dockerd"
    # cgroup v1 hierarchies may need mounting on minimal machines.
    command -v cgroupfs-mount >/dev/null && [ ! -e /sys/fs/cgroup/cgroup.controllers ] && cgroupfs-mount >/dev/null 2>&1 || true
    setsid dockerd >"$LOG/dockerd.log" 2>&1 </dev/null &
    echo $! >"$RUN/dockerd.pid"
    wait_for 60 dockerd docker version || { tail -20 "$LOG/dockerd.log" >&2; die "dockerd did not answer: see $LOG/dockerd.log"; }
    say "docker: $(docker version -f '{{.Server.Version}} API {{.Server.APIVersion}}') at unix:///var/run/docker.sock"
}

registry_up() {
    if curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
        say "registry: running at http://$REGISTRY_ADDR"
        return 0
    fi
    say "registry: starting on $REGISTRY_ADDR"
    mkdir -p "$STATE/registry/data"
    # A fixed secret: upload sessions survive a registry restart, so an
    # interrupted push resumes where it stopped instead of starting again.
    [ -s "$STATE/registry/secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/registry/secret"
    cat >"$STATE/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
  secret: $(cat "$STATE/registry/secret")
EOF
    setsid docker-registry serve "$STATE/registry/config.yml" >"$LOG/registry.log" 2>&1 </dev/null &
    echo $! >"$RUN/registry.pid"
    wait_for 30 registry curl -fsS "http://$REGISTRY_ADDR/v2/" || { tail -20 "$LOG/registry.log" >&2; die "registry did not answer: see $LOG/registry.log"; }
    say "registry: http://$REGISTRY_ADDR (storage $STATE/registry/data)"
}

# The registry's own garbage collection: the blobs no manifest references
# any more (after `kiln gc --registry` deleted manifests through the API;
# deletion is enabled in its config) are removed from its storage. It must
# not take uploads meanwhile, so a registry this script started is stopped
# for it and started again (interrupted uploads resume: fixed http.secret).
# Never `--delete-untagged`: it would delete the untagged children of
# multi-arch indexes.
registry_gc() {
    local cfg=$STATE/registry/config.yml data=$STATE/registry/data
    [ -f "$cfg" ] || die "registry-gc: no registry config at $cfg (run \`$0 up\` first)"
    local restart=""
    if started_pid registry; then
        restart=1
        stop_pid registry
    elif curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
        die "registry-gc: the registry on $REGISTRY_ADDR was not started by this script; stop it, then run registry-gc"
    fi
    local before after
    before=$(du -sk "$data" | cut -f1)
    if ! docker-registry garbage-collect "$cfg" >"$LOG/registry-gc.log" 2>&1; then
        tail -20 "$LOG/registry-gc.log" >&2
        [ -n "$restart" ] && registry_up
        die "registry garbage-collect failed: see $LOG/registry-gc.log"
    fi
    after=$(du -sk "$data" | cut -f1)
    say "registry gc: storage $before KiB -> $after KiB ($data)"
    if [ -n "$restart" ]; then registry_up; fi
}

zfs_daemon_answers() { zpool list >/dev/null 2>&1; }

# The files a pool lives on, as `zpool status` names its file vdevs
# (zfs-fuse's zpool has no `status -P` or `list -v`; it prints full paths).
pool_files() { zpool status "$1" 2>/dev/null | awk '$1 ~ /^\// { print $1 }'; }

# A pool that is already imported: it may have been created from another
# checkout, whose backing file lives there. A healthy one is kept (other
# tests may be using it) and named when its file is outside this checkout;
# one whose file is gone is broken (zfs-fuse still says ONLINE while it
# holds the deleted file open, until the next write fails), so it is named
# and re-created here. Returns 1 when the caller is to import or create.
zfs_existing_pool() {
    local health files f missing=()
    health=$(zpool list -H -o health "$POOL" 2>/dev/null) || return 1
    files=$(pool_files "$POOL")
    for f in $files; do [ -f "$f" ] || missing+=("$f"); done
    if [ ${#missing[@]} -gt 0 ]; then
        say "zfs: pool $POOL is broken: its backing file ${missing[*]} is gone (created from another checkout?); re-creating it from this checkout under $STATE/zfs"
        zpool destroy -f "$POOL" >>"$LOG/zfs-fuse.log" 2>&1 || zpool export -f "$POOL" >>"$LOG/zfs-fuse.log" 2>&1 || {
            zfs_unavailable "pool $POOL lost its backing file ${missing[*]} and cannot be destroyed; fix: zpool destroy -f $POOL, then bash scripts/services.sh up"
            return 0
        }
        return 1
    fi
    if [ "$health" != ONLINE ]; then
        zfs_unavailable "pool $POOL is $health on $files; fix: zpool clear $POOL (or zpool export $POOL, then bash scripts/services.sh up)"
        return 0
    fi
    local ours=no
    for f in $files; do
        case "$f" in "$STATE/zfs/"* | /var/lib/kiln-zfs/*) ours=yes ;; esac
    done
    if [ "$ours" = yes ]; then
        say "zfs: pool $POOL ONLINE on $files"
    else
        say "zfs: pool $POOL ONLINE on $files, outside this checkout ($STATE/zfs): removing that file breaks it; to move it here, when nothing uses it: zpool export $POOL, then bash scripts/services.sh up"
    fi
    return 0
}

# Mounts of a zfs-fuse that died ("Transport endpoint is not connected"):
# detached, so that the daemon now running mounts its datasets again.
# Before zfs-fuse starts every fuse.zfs mount is such a one.
zfs_drop_stale_mounts() {
    local all=$1 m n=0
    while read -r m; do
        if [ "$all" = all ] || ! stat "$m" >/dev/null 2>&1; then
            umount -l "$m" 2>/dev/null && n=$((n + 1))
        fi
    done < <(awk '$3 == "fuse.zfs" { print $2 }' /proc/mounts | sort -r)
    [ "$n" = 0 ] || say "zfs: detached $n stale mount(s) of a zfs-fuse that is gone"
    return 0
}

zfs_up() {
    rm -f "$RUN/zfs.unavailable"
    if ! zfs_daemon_answers; then
        zfs_drop_stale_mounts all
        say "zfs: starting zfs-fuse"
        [ -e /dev/fuse ] || mknod -m 666 /dev/fuse c 10 229 2>/dev/null || true
        modprobe fuse >/dev/null 2>&1 || true
        mkdir -p /var/run/zfs /var/lock/zfs
        rm -f /var/run/zfs/zfs_socket
        setsid zfs-fuse --no-daemon --no-kstat-mount >"$LOG/zfs-fuse.log" 2>&1 </dev/null &
        echo $! >"$RUN/zfs-fuse.pid"
        if ! wait_for 30 zfs-fuse zfs_daemon_answers; then
            zfs_unavailable "zfs-fuse did not answer within 30s"
            return 0
        fi
    fi
    if zfs_existing_pool; then
        # zfs-fuse re-imports a pool by itself when it starts: its datasets
        # may still sit on the mounts of the daemon before it.
        if ! stat "/$POOL" >/dev/null 2>&1; then
            zfs_drop_stale_mounts dead
            zfs mount -a >>"$LOG/zfs-fuse.log" 2>&1 || true
        fi
        return 0
    fi
    # A pool left by an earlier run (zfs-fuse restarted) is imported, not recreated.
    local dirs=("$STATE/zfs" "/var/lib/kiln-zfs")
    local d
    for d in "${dirs[@]}"; do
        if [ -f "$d/$POOL.img" ] && zpool import -d "$d" "$POOL" >>"$LOG/zfs-fuse.log" 2>&1; then
                echo "$d/$POOL.img" >"$RUN/zpool-$POOL.created"
            say "zfs: pool $POOL imported from $d/$POOL.img"
            return 0
        fi
    done
    for d in "${dirs[@]}"; do
        if [ -f "$d/$POOL.img" ]; then
            # Never destroy a pool's data: an image that does not import is
            # reported, not recreated.
            zfs_unavailable "$d/$POOL.img exists but does not import as pool $POOL (see $LOG/zfs-fuse.log)"
            return 0
        fi
    done
    for d in "${dirs[@]}"; do
        mkdir -p "$d"
        truncate -s 4G "$d/$POOL.img"
        for _ in 1 2 3 4 5; do
            if zpool create -f -m "/$POOL" "$POOL" "$d/$POOL.img" >>"$LOG/zfs-fuse.log" 2>&1; then
                echo "$d/$POOL.img" >"$RUN/zpool-$POOL.created"
                say "zfs: pool $POOL ONLINE on $d/$POOL.img (4 GiB sparse), mounted at /$POOL"
                return 0
            fi
            sleep 1
        done
        rm -f "$d/$POOL.img"
        say "zfs: zpool create on $d failed (attempts logged in $LOG/zfs-fuse.log)"
    done
    zfs_unavailable "zpool create $POOL failed on every backing file"
}

# ZFS is one component among several: when this machine cannot run it, say
# so loudly with zfs-fuse's log, record why (tests read the reason), bring
# up the rest, and exit non-zero at the end (`up`).
zfs_unavailable() {
    DOWN+=("zfs: $1")
    echo "$1" >"$RUN/zfs.unavailable"
    {
        echo "zfs: UNAVAILABLE: $1"
        echo "---- $LOG/zfs-fuse.log (tail)"
        tail -30 "$LOG/zfs-fuse.log" 2>/dev/null || true
        echo "---- /dev/fuse: $(ls -l /dev/fuse 2>&1)"
        echo "---- filesystem: $(df -T "$STATE" 2>&1 | tail -1)"
    } >&2
}

binfmt_up() {
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    fi
    update-binfmts --enable >/dev/null 2>&1 || true
    local arches=()
    local f
    for f in aarch64:arm64 arm:arm32v7 ppc64le:ppc64le s390x:s390x riscv64:riscv64; do
        grep -q enabled "/proc/sys/fs/binfmt_misc/qemu-${f%%:*}" 2>/dev/null && arches+=("${f#*:}")
    done
    say "binfmt: ${arches[*]:-none}"
}

qemu_status() {
    local kvm="no (TCG)"
    [ -r /dev/kvm ] && [ -w /dev/kvm ] && kvm="yes"
    say "qemu: $(qemu-system-x86_64 --version | head -1), qemu-img $(qemu-img --version | head -1 | awk '{print $3}'), KVM $kvm"
    say "skopeo: $(skopeo --version 2>/dev/null | awk '{print $3}')"
}

# Test and demo fixtures: static busybox binaries for amd64 and arm64
# (parents of the busybox images), and the debootstrap dependencies.
fixtures_up() {
    local dir=$STATE/fixtures
    mkdir -p "$dir"
    [ -x "$dir/busybox-amd64" ] || cp /bin/busybox "$dir/busybox-amd64"
    if [ ! -x "$dir/busybox-arm64" ]; then
        dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
        local tmp
        tmp=$(mktemp -d)
        if ! (cd "$tmp" && apt-get download -q busybox-static:arm64 >/dev/null 2>&1); then
            apt-get update -q >>"$LOG/apt.log" 2>&1 || true
            (cd "$tmp" && apt-get download -q busybox-static:arm64 >>"$LOG/apt.log" 2>&1) || { rm -rf "$tmp"; die "cannot download busybox-static:arm64: see $LOG/apt.log"; }
        fi
        dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
        cp "$tmp/x/bin/busybox" "$dir/busybox-arm64"
        rm -rf "$tmp"
    fi
    say "fixtures: busybox amd64 + arm64 in $dir"
}

up() {
    install_packages
    docker_up
    registry_up
    zfs_up
    binfmt_up
    qemu_status
    if [ -z "${KILN_SKIP_FIXTURES:-}" ]; then
        fixtures_up
        if [ -x "$ROOT/scripts/qemu-fixture.sh" ]; then
            bash "$ROOT/scripts/qemu-fixture.sh"
        fi
    fi
    if [ ${#DOWN[@]} -gt 0 ]; then
        local d
        for d in "${DOWN[@]}"; do printf 'services: NOT UP: %s\n' "$d" >&2; done
        exit 1
    fi
}

status() {
    if docker version >/dev/null 2>&1; then say "docker: running"; else say "docker: down"; fi
    if curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then say "registry: http://$REGISTRY_ADDR"; else say "registry: down"; fi
    if zpool list -H -o health "$POOL" 2>/dev/null | grep -q ONLINE; then say "zfs: pool $POOL ONLINE"; else say "zfs: down"; fi
    binfmt_up
    qemu_status
}

stop_pid() {
    local name=$1
    if started_pid "$name"; then
        local pid
        pid=$(cat "$RUN/$name.pid")
        kill "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
        say "$name: stopped (pid $pid)"
    fi
    rm -f "$RUN/$name.pid"
}

down() {
    stop_pid kiln-serve
    # A pool this script created or imported is exported (its backing file
    # stays, so the next `up` imports it with its datasets).
    if [ -f "$RUN/zpool-$POOL.created" ]; then
        local i
        for ((i = 0; i < 10; i++)); do
            zpool export -f "$POOL" >/dev/null 2>&1 && break
            sleep 1
        done
        zpool list "$POOL" >/dev/null 2>&1 && say "zfs: pool $POOL still imported (busy)" || say "zfs: pool $POOL exported"
        rm -f "$RUN/zpool-$POOL.created"
    fi
    stop_pid zfs-fuse
    stop_pid registry
    stop_pid dockerd
}

case "${1:-up}" in
up) up ;;
status) status ;;
down) down ;;
registry-gc) registry_gc ;;
registry-up) registry_up ;;
registry-down) stop_pid registry ;;
*) die "usage: $0 up|status|down|registry-gc|registry-up|registry-down" ;;
esac
