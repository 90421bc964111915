#!/usr/bin/env bash
# Prints the path of the Python 3.11 that `make install` makes .venv from, or says in one line on
# stderr what is missing and exits 1. The Makefile runs it before anything is installed.
# `find_python.sh PYTHON` checks that one only (`make PYTHON=...`): its path, or the same line.
#
# Why 3.11: jina 3.34 does not run on Python 3.12 or newer (`import jina` fails: docarray's DocList
# "is not subscriptable"), and current Debian and Ubuntu releases ship 3.12 or 3.13 as python3.
# Where it looks, in order: python3 when it is 3.11 (what `make` always took), python3.11 on PATH,
# then uv: a 3.11 uv knows of (its own or the system's), else one uv installs (`uv python install`
# downloads a standalone CPython where the machine reaches GitHub).
set -uo pipefail

REQUIRED=3.11
DEV_REQUIREMENTS="${BASH_SOURCE[0]%/*}/../requirements-dev.txt"  # pins the uv the line names

# Prints the interpreter's own path when $1 runs and is Python $REQUIRED; fails otherwise.
print_if_required() {
  "$1" -I -c "import sys
if '%d.%d' % sys.version_info[:2] != '$REQUIRED': sys.exit(1)
print(sys.executable)" 2>/dev/null
}

# Prints the uv version requirements-dev.txt pins (bash alone: PATH may hold nothing else).
uv_pin() {
  local line
  while read -r line; do
    [[ $line == uv==* ]] && echo "${line#uv==}" && return
  done < "$DEV_REQUIREMENTS"
}

# Prints what Python $1 is, for the message: "Python 3.12.1" or "missing".
version_of() {
  "$1" -I -c 'import platform; print("Python " + platform.python_version())' 2>/dev/null \
    || echo "missing"
}

# The one line: what is needed, why, which Python $1 is here ($2: what the search found), and
# how to get a 3.11.
say_what_is_needed() {
  echo "speech2image needs Python $REQUIRED (jina 3.34 does not run on Python 3.12 or newer;" \
    "$1 here: $(version_of "$1"))${2:-}: get one with" \
    "'pipx install uv==$(uv_pin) && uv python install $REQUIRED', then run make again" \
    "(or: make PYTHON=/path/to/python$REQUIRED)." >&2
}

if [ $# -gt 0 ]; then
  print_if_required "$1" && exit 0
  say_what_is_needed "$1"
  exit 1
fi

for name in python3 "python$REQUIRED"; do
  command -v "$name" >/dev/null && print_if_required "$name" && exit 0
done

uv_said=""
if command -v uv >/dev/null; then
  # --system: never the project's own .venv, which `make install` may be about to recreate.
  found=$(uv python find --system --no-project "$REQUIRED" 2>/dev/null) \
    && print_if_required "$found" && exit 0
  if uv_said=$(uv python install "$REQUIRED" 2>&1); then
    echo "$uv_said" >&2
    found=$(uv python find --system --no-project "$REQUIRED" 2>/dev/null) \
      && print_if_required "$found" && exit 0
  fi
fi

say_what_is_needed python3 " and found none"
if [ -n "$uv_said" ]; then
  uv_reason=${uv_said##*$'\n'}  # uv's last line, its most specific cause
  echo "  uv python install $REQUIRED failed: ${uv_reason#*cause: }" >&2
fi
exit 1
