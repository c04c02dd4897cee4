#!/usr/bin/env bash
# Run the fuzz targets: fuzz/run.sh SECONDS [TARGET ...]   (make fuzz FUZZ_S=SECONDS)
#
# Every target gets SECONDS.  Targets whose inputs reach the C module (frame, metrics) run
# in two phases: two thirds coverage-guided with the normal build (atheris' coverage of
# the Python paths the C must agree with), then one third on the same corpus with the
# ASan + UBSan build of gateway/_speedups.c: every corpus input is replayed under the
# sanitizers first, then mutated further.  The split exists because gcc's libasan, which
# must be preloaded (LD_PRELOAD) for ASan to see Python's heap, also defines libFuzzer's
# coverage symbols and so blinds atheris' coverage in that process.  PYTHONMALLOC=malloc
# puts every Python object (each frame's bytes) in its own malloc block, with redzones:
# with pymalloc a read past a small bytes object stays inside an arena, unseen.
#
# Corpora grow in build/fuzz/corpus/<target>; a crash leaves its input in
# build/fuzz/crashes/<target>/.  A summary line per target goes to build/fuzz/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
python=${PYTHON:-.venv/bin/python}
all=(frame metrics serial ble time_downlink recording keyring policy config lines
     verify_batches signed_keyring rekey release)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

scripts/build-asan-speedups.sh "$python" build/asan || exit 1
speedups=$(ls "$PWD"/build/asan/_speedups*.so)
libasan=$(gcc -print-file-name=libasan.so)
mkdir -p build/fuzz
: > build/fuzz/summary.txt
failed=0

stat() {  # stat NAME LOG: a libFuzzer final statistic, or 0
    sed -n "s/^stat::$1: *//p" "$2" | tail -1 | grep . || echo 0
}

for target in "${targets[@]}"; do
    case $target in
        keyring|policy|config|signed_keyring|rekey) argv=(fuzz/fuzz_loaders.py "$target") ;;
        *) argv=("fuzz/fuzz_$target.py") ;;
    esac
    corpus=build/fuzz/corpus/$target
    crashes=build/fuzz/crashes/$target/
    mkdir -p "$corpus" "$crashes"
    log=build/fuzz/$target
    common=(-print_final_stats=1 -max_len=4096 -timeout=30 -rss_limit_mb=4096
            "-artifact_prefix=$crashes" "$corpus")
    case $target in
        frame|metrics) cov_s=$(( seconds * 2 / 3 )); asan_s=$(( seconds - cov_s )) ;;
        *) cov_s=$seconds; asan_s=0 ;;
    esac
    "$python" "${argv[@]}" -max_total_time="$cov_s" "${common[@]}" > "$log.cov.log" 2>&1
    rc=$?
    cov=$(grep -o 'cov: [0-9]*' "$log.cov.log" | tail -1 | tr -dc 0-9)
    ft=$(grep -o 'ft: [0-9]*' "$log.cov.log" | tail -1 | tr -dc 0-9)
    execs=$(stat number_of_executed_units "$log.cov.log")
    asan_execs=-
    if [ $rc -eq 0 ] && [ "$asan_s" -gt 0 ]; then
        LD_PRELOAD=$libasan PYTHONMALLOC=malloc DORDT_SPEEDUPS=$speedups \
            ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:symbolize=1 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
            "$python" "${argv[@]}" -max_total_time="$asan_s" "${common[@]}" \
            > "$log.asan.log" 2>&1
        rc=$?
        asan_execs=$(stat number_of_executed_units "$log.asan.log")
    fi
    files=$(find "$corpus" -type f | wc -l)
    result=ok
    [ $rc -ne 0 ] && { result="FAILED (exit $rc, see $log.*.log and $crashes)"; failed=1; }
    line="$target: ${cov_s}s coverage-guided ${execs} execs, cov ${cov:-?} ft ${ft:-?}, corpus ${files}; ${asan_s}s under ASan+UBSan ${asan_execs} execs; $result"
    echo "$line" | tee -a build/fuzz/summary.txt
done
exit $failed
