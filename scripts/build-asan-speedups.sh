#!/usr/bin/env bash
# Build gateway/_speedups.c with AddressSanitizer and UndefinedBehaviorSanitizer for the
# fuzz targets (make fuzz), beside the normal build: build/asan/_speedups<EXT_SUFFIX>.
#   usage: scripts/build-asan-speedups.sh PYTHON OUT_DIR
# gcc links libubsan into the module itself; libasan must be the first library of the
# process, so Python is started with LD_PRELOAD=$(gcc -print-file-name=libasan.so)
# (fuzz/run.sh does that, and fuzz/harness.py loads this module as gateway._speedups).
# -fno-sanitize-recover: undefined behaviour aborts, so the fuzzer sees a crash.
set -euo pipefail
python=${1:-.venv/bin/python}
out=${2:-build/asan}
mkdir -p "$out"
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
target="$out/_speedups$suffix"
if [ "$target" -nt gateway/_speedups.c ] && [ "$target" -nt "$0" ]; then
    exit 0
fi
gcc -shared -fPIC -O1 -g -fno-omit-frame-pointer \
    -fsanitize=address,undefined -fno-sanitize-recover=all \
    -I"$include" gateway/_speedups.c -lcrypto -o "$target"
echo "built $target (ASan + UBSan)"
