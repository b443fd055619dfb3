#!/usr/bin/env bash
# The front door. Needs only python3 (3.11+).
#
#   ./run.sh main [hydra overrides...]   set up .venv, run the whole pipeline (mlflow run . -e main)
#   ./run.sh test [pytest args...]       set up .venv with test tools, run the test suite
#
# The virtual environment is (re)installed only when the requirements files change.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${VENV:-.venv}"

ensure_venv() {  # $1: requirements file
    local requirements="$1" stamp="$VENV/.installed-$(basename "$1")"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    local wanted
    wanted="$(cat requirements*.txt | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
        echo "$wanted" > "$stamp"
    fi
    export PATH="$PWD/$VENV/bin:$PATH"  # `mlflow run --env-manager local` runs `python` from PATH
}

command="${1:-}"
shift || true
case "$command" in
    main)
        ensure_venv requirements.txt
        # Each argument is one Hydra override; %q keeps spaces and quotes inside one.
        overrides=""
        [ $# -eq 0 ] || overrides="$(printf '%q ' "$@")"
        exec mlflow run . -e main --env-manager local --experiment-name heart-disease \
            -P overrides="$overrides"
        ;;
    test)
        ensure_venv requirements-test.txt
        exec python -m pytest "$@"
        ;;
    *)
        sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
