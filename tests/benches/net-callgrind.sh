#!/bin/sh
# Instructions per frame of the `net` benchmark's two sides, measured by callgrind (repeatable on a busy machine,
# unlike wall-clock numbers): `tests/benches/net.rs --callgrind <split|packed> [--sink]` alternates
# `NetDriver::send_burst` (cg_driver), `NetDevice::process_tx` (cg_device) and draining the `Pair`'s other end
# (cg_drain) on one thread; only those three functions are collected.
#
# Usage: tests/benches/net-callgrind.sh [BURSTS [EXTRA-BENCH-ARGS...]]   (default 20000 bursts of 32 frames;
# e.g. `tests/benches/net-callgrind.sh 5000 --no-in-order`)
set -eu
cd "$(dirname "$0")/../.."
bursts=${1:-20000}
[ $# -gt 0 ] && shift
extra="$*"
out=target/bench/callgrind
mkdir -p "$out"
bin=$(cargo bench -p virtio-sdk-tests --bench net --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\/net-[0-9a-f]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "cannot build the net bench" >&2; exit 1; }
printf '%-14s %12s %12s %12s %12s\n' case frames driver/frame device/frame drain/frame
for case in split packed "split --sink" "packed --sink"; do
    name=$(echo "$case" | tr -d ' -')
    file="$out/$name.out"
    # shellcheck disable=SC2086
    log=$(valgrind --tool=callgrind --callgrind-out-file="$file" --collect-atstart=no \
        --toggle-collect='*cg_driver*' --toggle-collect='*cg_device*' --toggle-collect='*cg_drain*' \
        "$bin" --callgrind $case --bursts "$bursts" $extra 2>/dev/null)
    frames=$(echo "$log" | sed -n 's/.*: \([0-9]*\) frames measured/\1/p')
    ann=$(callgrind_annotate --inclusive=yes --threshold=100 "$file" 2>/dev/null)
    ir() { echo "$ann" | grep "net::$1" | head -n 1 | awk '{gsub(",", "", $1); print $1}'; }
    d=$(ir cg_driver); v=$(ir cg_device); r=$(ir cg_drain)
    per() { [ -n "$1" ] && echo "$1 $frames" | awk '{printf "%.1f", $1 / $2}' || echo "-"; }
    printf '%-14s %12s %12s %12s %12s\n' "$name" "$frames" "$(per "$d")" "$(per "$v")" "$(per "${r:-}")"
done
echo "(callgrind files in $out; per-function detail: callgrind_annotate --inclusive=yes $out/<case>.out)"
