#!/usr/bin/env bash
# Builds Ferry's libFuzzer targets (the fuzz/ package, with -sanitize=fuzzer,
# in .build-fuzz) and runs each for SECONDS (default 60) from a copy of its
# committed corpus, so a run never changes the repository.  Fails on any
# crash, trap or hang, leaving the input under .build-fuzz/findings/TARGET/.
#
#     scripts/fuzz.sh            # about a minute per target (CI)
#     scripts/fuzz.sh 3600       # a long run
#     FUZZ_TARGETS=qmp scripts/fuzz.sh 600
#
# Targets: stream (a migration stream into real RAM, fuzz/Sources/FuzzStream),
# returnpath (the destination's answers, through the pure decoder and the
# engine's reader thread, fuzz/Sources/FuzzReturnPath), qmp (QMP text
# through the socket's decoder and the session, fuzz/Sources/FuzzQMP) and
# mappedram (a mapped-ram file through the header and metadata decoders and
# `ferry analyze`, fuzz/Sources/FuzzMappedRAM; it runs half of SECONDS: its
# decoders are small, and CI's total stays near three minutes) and virtio (a
# hostile driver against the virtio-balloon's transport and rings, and hostile
# device state, fuzz/Sources/FuzzVirtio; half of SECONDS too).  See
# README.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
targets=${FUZZ_TARGETS:-"stream returnpath qmp mappedram virtio"}
scratch="$root/.build-fuzz"

declare -A product=([stream]=FuzzStream [returnpath]=FuzzReturnPath [qmp]=FuzzQMP [mappedram]=FuzzMappedRAM [virtio]=FuzzVirtio)
# Inputs longer than this are not tried: a stream seed with its pages is up to ~27 KB (multifd: three channels),
# a return path's seeds a few hundred bytes, a QMP transcript a few hundred bytes, and a compact
# mapped-ram file with its pages up to ~29 KB.
declare -A max_len=([stream]=32768 [returnpath]=4096 [qmp]=4096 [mappedram]=40960 [virtio]=70000)
# Each target's share of SECONDS, in halves.
declare -A halves=([stream]=2 [returnpath]=2 [qmp]=2 [mappedram]=1 [virtio]=1)

build_log=$(mktemp)
for target in $targets; do
    echo "== building fuzz target $target (${product[$target]})"
    if ! swift build -c release --sanitize=fuzzer --package-path fuzz --scratch-path "$scratch" \
            --product "${product[$target]}" >"$build_log" 2>&1; then
        grep -E "error" "$build_log" >&2 || tail -40 "$build_log" >&2
        rm -f "$build_log"
        echo "!! building fuzz target $target failed" >&2
        exit 1
    fi
done
rm -f "$build_log"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for target in $targets; do
    binary="$scratch/release/${product[$target]}"
    findings="$scratch/findings/$target"
    mkdir -p "$work/$target/corpus" "$findings"
    cp fuzz/corpus/"$target"/* "$work/$target/corpus/"
    seeds=()
    if [ "$target" != qmp ]; then
        # Fresh seeds from the current encoders, in case the committed ones predate a format change.
        "$binary" --make-seeds "$work/$target/seeds" >/dev/null
        seeds=("$work/$target/seeds")
    fi
    duration=$(( (seconds * ${halves[$target]} + 1) / 2 ))
    echo "== fuzzing $target for ${duration}s"
    log="$work/$target/log"
    set +e
    SWIFT_BACKTRACE=enable=no "$binary" -max_total_time="$duration" -max_len="${max_len[$target]}" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$findings/" \
        "$work/$target/corpus" "${seeds[@]}" >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    corpus=$(ls "$work/$target/corpus" | wc -l)
    if [ "$rc" -ne 0 ]; then
        grep -E "ERROR|Fatal error|SUMMARY|Test unit written|Base64" "$log" >&2 || tail -40 "$log" >&2
        echo "!! $target: FAILED (exit $rc) after ${runs:-?} executions; the input is in $findings/" >&2
        echo "   reproduce: $binary $findings/<crash-file>" >&2
        status=1
    else
        echo "$target: ${runs:-?} executions (${rate:-?}/s), no crash; corpus grew to $corpus inputs"
    fi
done
exit $status
