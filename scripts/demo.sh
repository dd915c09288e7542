#!/usr/bin/env bash
# README's first command: bring the services up, then run Kiln's main job
# on this machine with the demo profile (scripts/demo/): build every demo
# target with progress, publish to the local registry, write the lockfile,
# start the digest API, and show the availability matrix and a few pins.
# A second run builds nothing and changes no digest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/services.sh up
echo
echo "== building kiln (release)"
cargo build --release --locked -q
KILN="${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln"
DEMO=(--config "$ROOT/scripts/demo/kiln.toml")
echo
echo "== kiln doctor"
"$KILN" doctor
echo
echo "== parent images (Debian 12 for amd64 and arm64 by debootstrap, once; the busybox test fixture)"
"$KILN" "${DEMO[@]}" fixtures --debian
echo
echo "== the demo's opam repository (scripts/demo/opam-repository/ as a git repository)"
bash scripts/demo/opam-repository.sh
echo
echo "== kiln sources sync (every pinned input, fetched once into the registry)"
"$KILN" "${DEMO[@]}" sources sync
echo
echo "== kiln plan (demo profile)"
"$KILN" "${DEMO[@]}" plan
echo
echo "== kiln build"
# The summary as JSON (the build's progress as log lines meanwhile): a tag
# that failed, for any reason, stops the demo naming it, its kind and its
# error; a target with no builder here (Windows) is shown, not a failure.
SUMMARY=$ROOT/.kiln/demo/build-summary.json
mkdir -p "$(dirname "$SUMMARY")"
build_status=0
KILN_LOG=${KILN_LOG:-warn,kiln::pipeline=info} "$KILN" "${DEMO[@]}" build --json >"$SUMMARY" || build_status=$?
if [ ! -s "$SUMMARY" ]; then
    echo "demo: kiln build failed (exit $build_status) before it could build anything (above)" >&2
    exit 1
fi
python3 "$ROOT/scripts/demo/build-verdict.py" "$SUMMARY"
if [ "$build_status" != 0 ]; then
    echo "demo: kiln build exited $build_status" >&2
    exit 1
fi
echo
echo "== kiln verify"
"$KILN" "${DEMO[@]}" verify
echo
echo "== digest API"
RUN=$ROOT/.kiln/run
mkdir -p "$RUN"
if [ -f "$RUN/kiln-serve.pid" ] && kill -0 "$(cat "$RUN/kiln-serve.pid")" 2>/dev/null; then
    kill "$(cat "$RUN/kiln-serve.pid")" 2>/dev/null || true
    sleep 0.5
fi
setsid "$KILN" "${DEMO[@]}" serve >"$ROOT/.kiln/log/kiln-serve.log" 2>&1 </dev/null &
echo $! >"$RUN/kiln-serve.pid"
for _ in $(seq 1 40); do curl -fsS http://127.0.0.1:8080/healthz >/dev/null 2>&1 && break; sleep 0.25; done
echo "status page: http://127.0.0.1:8080/  (stop with: bash scripts/services.sh down)"
echo
echo "== kiln status"
"$KILN" "${DEMO[@]}" status
echo
echo "== kiln resolve (a pinned reference, and refusals with what is missing)"
for img in ocaml/opam:debian-12-ocaml-4.13 ocaml/opam:debian-12-system-ocaml-4.13 macos-base:macos-homebrew-ocaml-5.5 openbsd-base:openbsd-79-amd64-ocaml-5.5 \
    ocaml/opam:windows-server-mingw-ltsc2022-ocaml-5.5 ocaml/opam:debian-12-ocaml-5.5; do
    echo "\$ kiln resolve $img"
    "$KILN" "${DEMO[@]}" resolve --api http://127.0.0.1:8080 "$img" || echo "(exit $?)"
done
echo
echo "== the pins, read back by skopeo (a client Kiln did not write)"
for img in ocaml/opam:debian-12-system-ocaml-4.13 ocaml/opam:debian-12-ocaml-4.13 macos-base:macos-homebrew-ocaml-5.5 openbsd-base:openbsd-79-amd64-ocaml-5.5; do
    pin=$("$KILN" "${DEMO[@]}" resolve "$img")
    repo="${pin#*/}"; repo="${repo%%:*}"; digest="${pin##*@}"
    printf '%-40s ' "$img"
    skopeo inspect --tls-verify=false --raw "docker://${pin%%/*}/$repo@$digest" |
        python3 -c 'import json,sys; m=json.load(sys.stdin); print(", ".join(sorted(e["platform"]["os"]+"/"+e["platform"]["architecture"] for e in m["manifests"])))'
done
echo
echo "== the compilers, run from the pinned images (a client Kiln did not write: docker)"
for img in ocaml/opam:debian-12-ocaml-4.13 ocaml/opam:debian-12-system-ocaml-4.13; do
    pin=$("$KILN" "${DEMO[@]}" resolve "$img")
    repo="${pin#*/}"; repo="${repo%%:*}"; digest="${pin##*@}"
    # Each arch's child by its own digest (Docker 20.10 keeps one platform
    # of an index digest at a time).
    skopeo inspect --tls-verify=false --raw "docker://${pin%%/*}/$repo@$digest" |
        python3 -c 'import json,sys; [print(e["platform"]["architecture"], e["digest"]) for e in json.load(sys.stdin)["manifests"]]' |
    while read -r arch child; do
        printf '%-45s %-6s ' "$img" "$arch"
        docker run --rm --pull always --platform "linux/$arch" "${pin%@*}@$child" sh -c \
            'cd /tmp && echo "let () = print_endline (\"Hello from OCaml \" ^ Sys.ocaml_version ^ \" on \" ^ Sys.os_type)" > h.ml && ocamlopt -o h h.ml && ./h && uname -m' 2>/dev/null </dev/null |
            tr '\n' ' '
        echo
    done
done
echo
echo "== the macOS image on this machine's pool, in obuilder's layout (kiln fetch)"
# obuilder's fetch lists <pool>/base-image/NAME and clones each <child>@snap
# into the job; `kiln fetch` points NAME at the published tree.
# The namespace the demo published under: kiln.toml's, or the
# KILN_REGISTRY_NAMESPACE this run was given.
NAMESPACE=$("$KILN" "${DEMO[@]}" config --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["registry"]["namespace"])')
"$KILN" "${DEMO[@]}" fetch "$NAMESPACE/macos-base:macos-homebrew-ocaml-5.5" --pool kiln
zfs list -H -r -t all -o name,origin kiln/base-image/macos-homebrew-ocaml-5.5
echo
echo "== the OpenBSD-path disk in obuilder's QEMU store (kiln fetch --obuilder-store)"
echo "(the test guest standing in for OpenBSD: its \`ocaml\` is a script, not a compiler)"
# The disk as base-image/<tag>.qcow2 (what a spec's `from` opens) and its
# download-cache disk as the initial cache/c-opam-archives (kept once in use).
STORE=$ROOT/.kiln/demo/obuilder-qemu
"$KILN" "${DEMO[@]}" fetch "$NAMESPACE/openbsd-base:openbsd-79-amd64-ocaml-5.5" --obuilder-store "$STORE"
(cd "$STORE" && find base-image cache -name '*.qcow2' | sort)
