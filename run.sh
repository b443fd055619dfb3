#!/usr/bin/env bash
# The front door. Needs only python3 (3.11+). Every verb sets up .venv first.
#
#   ./run.sh main [overrides...]        the whole pipeline: mlflow run . -e main
#   ./run.sh sweep [overrides...]       train + evaluate over a grid or an Optuna search: mlflow run . -e sweep
#   ./run.sh score [overrides...]       batch scoring with the champion: mlflow run . -e score
#   ./run.sh monitor [overrides...]     drift of served or given patients: mlflow run . -e monitor
#   ./run.sh leaderboard [args...]      rank trials and runs: python -m tools.leaderboard
#   ./run.sh serve [args...]            REST endpoint of the champion: mlflow models serve, seal verified first
#   ./run.sh app [args...]              the FastAPI app: python -m serving
#   ./run.sh ui [args...]               MLflow's UI on the project's store (prints the runs' address): mlflow ui
#   ./run.sh server [args...]           a team tracking server (PostgreSQL, artifacts, auth)
#   ./run.sh test [pytest args...]      ruff, then the test suite (installs the test tools too)
#   ./run.sh help                       this text
#
# Overrides are Hydra overrides (see conf/), one per argument.
# The virtual environment is (re)installed only when the requirements files change.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${VENV:-.venv}"
LAUNCHER_SETTING=engine/heart_disease_mlflow_run.pth  # `mlflow run` starts 1.3 s sooner (read it)

ensure_venv() {  # $1: requirements file
    local requirements="$1" stamp="$VENV/.installed-$(basename "$1")"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    local wanted
    wanted="$(cat requirements*.txt | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        # pip would compile every installed file on one core; compileall uses them all
        # (a fresh .venv, tests included, is ready about 30 s sooner on 2 cores).
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile -r "$requirements"
        "$VENV/bin/python" -m compileall -q -j 0 "$VENV/lib" >/dev/null ||
            echo "note: some installed files did not compile ahead; Python compiles them on import" >&2
        echo "$wanted" > "$stamp"
    fi
    local site_packages installed
    for site_packages in "$VENV"/lib/python3*/site-packages; do
        installed="$site_packages/${LAUNCHER_SETTING##*/}"
        # Renamed into place: site never reads half a line.
        cmp -s "$LAUNCHER_SETTING" "$installed" ||
            { cp -- "$LAUNCHER_SETTING" "$installed.new" && mv -- "$installed.new" "$installed"; }
    done
    export PATH="$PWD/$VENV/bin:$PATH"  # `mlflow run --env-manager local` runs `python` from PATH
}

usage() {  # the comment block at the top of this file
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

command="${1:-help}"
shift || true

run_entry_point() {  # $1: entry point; the rest: Hydra overrides
    local entry_point="$1" overrides=""
    shift
    ensure_venv requirements.txt
    # Each argument is one Hydra override; %q keeps spaces and quotes inside one.
    [ $# -eq 0 ] || overrides="$(printf '%q ' "$@")"
    # The launcher would print "View run at <url>", password included if the URI has one.
    export MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="${MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT:-true}"
    export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
    exec mlflow run . -e "$entry_point" --env-manager local --experiment-name heart-disease \
        -P overrides="$overrides"
}

case "$command" in
    main|sweep|score|monitor)
        run_entry_point "$command" "$@"
        ;;
    leaderboard)
        ensure_venv requirements.txt
        exec python -m tools.leaderboard "$@"
        ;;
    serve)
        ensure_venv requirements.txt
        export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
        # mlflow models serve checks no seal: serve a copy whose seal verified (engine/seal.py).
        checked="$(mktemp -d)/champion"
        python -m tools.seal verify models:/heart-disease@champion --into "$checked" || exit $?
        exec mlflow models serve -m "$checked" --env-manager local "$@"
        ;;
    app)
        ensure_venv requirements.txt
        exec python -m serving "$@"
        ;;
    ui)
        ensure_venv requirements.txt
        exec python -m tools.ui "$@"
        ;;
    server)
        ensure_venv requirements.txt
        exec python scripts/team_server.py "$@"
        ;;
    test)
        ensure_venv requirements-test.txt
        ruff check --quiet .
        exec python -m pytest "$@"
        ;;
    help|-h|--help)
        usage
        ;;
    *)
        echo "unknown command: $command" >&2
        usage >&2
        exit 2
        ;;
esac
