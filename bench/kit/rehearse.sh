#!/usr/bin/env bash
# The GPU kit, rehearsed on a CPU: a fresh Python 3.12 holding only what the GPU machine's
# image holds (torch, numpy and the rest of wheelhouse.py's IMAGE, from the package
# index), then the wheelhouse installed from its wheels alone (--no-index), then every
# stage of measure.py at the tiny width. A kit never installed from its own wheels would
# fail on the day. Needs the package index (the image's stand-in downloads torch, ~3 GB).
#
#   bash bench/kit/rehearse.sh [WORKDIR]      # CI's slow step; about 10 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${1:-}" ]; then
    work=$1
else
    work=$(mktemp -d /tmp/kit-rehearsal-XXXXXX)
    trap 'rm -rf "$work"' EXIT  # 5 GB of CUDA torch: not kept unless asked for
fi
# A Python 3.12 that runs (pyenv's shim names versions it cannot run), else pyenv's own.
py312=${PY312:-python3.12}
"$py312" --version >/dev/null 2>&1 || py312=$(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python | tail -1)
here=.venv/bin/python

"$here" bench/kit/wheelhouse.py download
"$here" bench/kit/wheelhouse.py check
if [ ! -x "$work/image/bin/python" ]; then
    "$py312" -m venv "$work/image"
    "$work/image/bin/pip" install -q --disable-pip-version-check $("$here" bench/kit/wheelhouse.py image)
fi
rm -rf "$work/site" "$work/out"
# As on the machine: the image's python3, no index, the wheels and nothing else.
PIP_NO_INDEX=1 "$work/image/bin/python" bench/kit/wheelhouse.py install --cpu --target "$work/site"
PYTHONPATH="$work/site:$PWD" OMP_NUM_THREADS=2 "$work/image/bin/python" bench/kit/measure.py \
    --cpu --out "$work/out" --workdir "$work/bench" --budget 900
cat "$work/out/results.md"
