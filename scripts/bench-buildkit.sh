#!/usr/bin/env bash
# Classic builder against BuildKit, on one current Docker Engine, in one
# run: the measurements behind decision 096.
#
#   bash scripts/bench-buildkit.sh
#
# The engine is Debian trixie's docker.io (26.x) with its docker-buildx,
# run chrooted from the root the tests debootstrap
# (.kiln/fixtures/trixie-docker; made here if missing, docker-buildx added
# to it once), in a mount namespace of this script's own, with no network
# for its containers (its own bridge, nothing routed). Both builders build the same Dockerfile FROM the
# busybox fixture parent in the local registry (`bash scripts/services.sh
# up` first): a step of many small files, a step of 64 MiB, a small last
# step. Measured: a cold build (--no-cache), a warm one (every step
# cached), and a rebuild after the last step changed; then what Kiln's
# export reads, `docker save` of the image. Prints seconds and the ratio
# BuildKit / classic for each. Leaves nothing: the engine is stopped and
# its data removed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${KILN_STATE_DIR:-$ROOT/.kiln}
R=$STATE/fixtures/trixie-docker
PARENT=127.0.0.1:5000/kiln-fixtures/busybox:latest

if [ "${1:-}" != --inside ]; then
    if [ ! -d "$R/kiln/d" ]; then
        echo "== debootstrap trixie with docker.io (once)"
        rm -rf "$R.partial"
        debootstrap --variant=minbase --include=docker.io,ca-certificates trixie "$R.partial" http://deb.debian.org/debian >/dev/null
        mkdir -p "$R.partial/kiln/d"
        mv "$R.partial" "$R"
    fi
    if [ ! -x "$R/usr/libexec/docker/cli-plugins/docker-buildx" ]; then
        echo "== docker-buildx into the trixie root (once)"
        chroot "$R" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-buildx >/dev/null'
    fi
    skopeo inspect --tls-verify=false "docker://$PARENT" >/dev/null ||
        { echo "bench: $PARENT is not in the registry (bash scripts/services.sh up)" >&2; exit 1; }
    WORK=$(mktemp -d /var/tmp/kiln-bench-buildkit.XXXXXX)
    # A bridge of its own: an engine given `--bridge=none` removes the
    # host engine's docker0.
    BR=kbench$$
    ip link add "$BR" type bridge
    ip addr add 10.213.77.1/24 dev "$BR"
    ip link set "$BR" up
    # The engine's mounts end with the namespace; then its data can go.
    status=0
    unshare --mount --propagation private bash "$0" --inside "$WORK" "$BR" || status=$?
    ip link del "$BR" 2>/dev/null || true
    rm -rf "$WORK"
    exit "$status"
fi

# In a mount namespace of our own: the root's /proc, /sys, /dev, a tmpfs
# /run, the work dir at /kiln/d; dockerd and the CLI both chrooted.
WORK=$2
BR=$3
mount --bind "$R" "$R"
mount --rbind /proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"
mount --bind "$WORK" "$R/kiln/d"
SOCK=unix:///kiln/d/docker.sock
chroot "$R" dockerd --data-root /kiln/d/data --exec-root /run/docker -p /kiln/d/docker.pid \
    -H "$SOCK" --bridge="$BR" --iptables=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 &
DOCKERD=$!
cleanup() {
    kill "$DOCKERD" 2>/dev/null || true
    wait "$DOCKERD" 2>/dev/null || true
}
trap cleanup EXIT
d() { chroot "$R" env DOCKER_HOST="$SOCK" "$@"; }
for _ in $(seq 120); do d docker version >/dev/null 2>&1 && break; sleep 0.5; done
d docker version --format 'engine: Docker {{.Server.Version}}' || { cat "$WORK/dockerd.log"; exit 1; }
d docker buildx version | sed 's/^/buildx: /'
d docker pull -q "$PARENT" >/dev/null

mkdir -p "$WORK/ctx"
write_dockerfile() { # last step's text
    cat >"$WORK/ctx/Dockerfile" <<EOF
FROM $PARENT
RUN mkdir -p /many && for i in \$(seq 2000); do echo "\$i" > /many/f\$i; done
RUN dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null
RUN echo "$1" > /last
EOF
}

now() { date +%s.%N; }
declare -A T
timed() { # name, command...
    local name=$1; shift
    local t0; t0=$(now)
    "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
    T[$name]=$(echo "$(now) - $t0" | bc)
}
classic() { d env DOCKER_BUILDKIT=0 docker build --network none -q "$@" /kiln/d/ctx; }
buildkit() { d docker buildx build --network none --progress quiet "$@" /kiln/d/ctx; }

write_dockerfile one
timed classic_cold classic --no-cache -t bench:classic
timed buildkit_cold buildkit --no-cache -t bench:buildkit
timed classic_warm classic -t bench:classic
timed buildkit_warm buildkit -t bench:buildkit
write_dockerfile two
timed classic_last classic -t bench:classic
timed buildkit_last buildkit -t bench:buildkit
timed classic_save d sh -c 'docker save bench:classic > /kiln/d/classic.tar'
timed buildkit_save d sh -c 'docker save bench:buildkit > /kiln/d/buildkit.tar'

echo
printf '%-34s %10s %10s %8s\n' "measure (seconds)" classic BuildKit ratio
for m in cold warm last save; do
    c=${T[classic_$m]} b=${T[buildkit_$m]}
    case $m in
        cold) what="cold build (--no-cache)" ;;
        warm) what="warm build (every step cached)" ;;
        last) what="rebuild, last step changed" ;;
        save) what="docker save (Kiln's export input)" ;;
    esac
    printf '%-34s %10.2f %10.2f %8.2f\n' "$what" "$c" "$b" "$(echo "$b / $c" | bc -l)"
done
