#!/usr/bin/env bash
# ensure-apt.sh [PACKAGE...]: install the Debian packages the test suite runs for real
# (default: mosquitto and victoria-metrics) unless their programs are already there,
# libcrypto's headers for the optional C frame path (setup.py; without them it is skipped),
# the label tests' QR decoder (zbar-tools: zbarimg) and SVG renderer (librsvg2-bin:
# rsvg-convert), chromium with its driver for the audit report's browser test, and gcc
# with its sanitiser runtimes for the fuzz targets (fuzz/).
set -euo pipefail
if [ $# -eq 0 ]; then
    want=()
    [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || want+=(mosquitto)
    command -v victoria-metrics >/dev/null || want+=(victoria-metrics)
    [ -f /usr/include/openssl/sha.h ] || want+=(libssl-dev)
    command -v zbarimg >/dev/null || want+=(zbar-tools)
    command -v rsvg-convert >/dev/null || want+=(librsvg2-bin)
    # the audit report's browser test: headless chromium driven by selenium
    command -v chromium >/dev/null || want+=(chromium)
    command -v chromedriver >/dev/null || want+=(chromium-driver)
    # the fuzz targets' sanitiser build of gateway/_speedups.c (scripts/build-asan-speedups.sh)
    command -v gcc >/dev/null || want+=(gcc)
    if command -v gcc >/dev/null; then
        [ -f "$(gcc -print-file-name=libasan.so)" ] || want+=(libasan8)
        [ -f "$(gcc -print-file-name=libubsan.so)" ] || want+=(libubsan1)
    fi
else
    want=("$@")
fi
[ ${#want[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to apt-get install ${want[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "setup: apt-get install ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
# The packages' own services are not used: the tests start their own on loopback.
$sudo apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null
