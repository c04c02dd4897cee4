#!/usr/bin/env bash
# ensure-venv.sh PYTHON VENV EXTRAS: make the virtualenv and install this project into it.
set -euo pipefail
python=$1 venv=$2 extras=$3
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "dordt needs Python >= 3.11; '$python' is $("$python" --version 2>&1)." >&2
    echo "Install python3.11 (apt-get install python3.11-venv) and run: make PYTHON=python3.11 ..." >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    "$python" -m venv "$venv" || {
        echo "setup: '$python -m venv' failed; on Debian install python3-venv" >&2; exit 1; }
fi
echo "setup: installing dordt$extras into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".$extras" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
"$venv/bin/python" -c 'import dordt, firmware, gateway' \
    || { echo "setup: the install into $venv did not work (see pip's output above)" >&2; exit 1; }
