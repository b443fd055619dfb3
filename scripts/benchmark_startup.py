"""Benchmark: what each command costs before it does any work. Not a test: it measures and
writes a table.

F, the floor, is `python -c "import mlflow"`. On a fresh SQLite store in a temp dir where
the default pipeline has run once, each command below runs --repeats times, interleaved
(one of each, then again) so that other processes on the machine weigh on all of them
alike; each figure is the median wall time, and the same median as a multiple of F:
  - `python -m steps.main` with every step reused;
  - `mlflow run . -e main` with every step reused;
  - `mlflow run` of a project whose entry point does nothing (`python -c pass`): what the
    launcher alone costs, the floor under the line above;
  - `python -m tools.score` of a one-patient CSV with the champion;
  - `python -m tools.leaderboard` (what `./run.sh leaderboard` runs);
  - the FastAPI app (`python -m serving`): from start to its first answer to /predict.
With --compare-rows N [N ...]: `python -m tools.score` against `mlflow models predict` on
a CSV of N synthetic patients, wall time with both sides' start-up included (one run each).

    python scripts/benchmark_startup.py [--repeats 5] [--compare-rows 1000000 5000000] [--output docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from benchmark_pipeline import Bench, machine, write_section  # noqa: E402
from benchmark_score import uptime, write_patients  # noqa: E402

from engine.results import EVERY_STEP_UP_TO_DATE  # noqa: E402
from engine.startup import MLFLOW_RUN_SETTING, mlflow_run_setting_installed  # noqa: E402
from steps.pipeline import STEPS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MARKER_START, MARKER_END = "<!-- startup-benchmark:start -->", "<!-- startup-benchmark:end -->"
# The goals of the start-up issue, as multiples of F.
GOALS = {"main, every step reused": 1.5, "mlflow run . -e main, every step reused": 3.5,
         "score, one patient": 2.0, "leaderboard": 1.5}
PROGRESS_LINE = re.compile(r"^(\w+): (\w+) run [0-9a-f]{32} in ", re.MULTILINE)  # StepResult.progress_line
PATIENT = {"age": 63, "sex": 1, "cp": 1, "trestbps": 145, "chol": 233, "fbs": 1, "restecg": 2, "thalach": 150,
           "exang": 0, "oldpeak": 2.3, "slope": 3, "ca": 0, "thal": 6}


def timed(command: list[str], env: dict, every_step_reused: bool = False) -> float:
    """Wall seconds of `command`. `every_step_reused`: the figure of a main that found every
    step up to date before loading MLflow; one that ran a step, or reused them the slow way
    (through MLflow and the runner), stops the benchmark with its output."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    statuses = dict(PROGRESS_LINE.findall(done.stdout))
    if every_step_reused and (statuses != dict.fromkeys(STEPS, "reused") or EVERY_STEP_UP_TO_DATE not in done.stdout):
        raise SystemExit(f"{command} was to find every step up to date, but: {statuses}\n{done.stdout[-3000:]}")
    return seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def first_answer(env: dict) -> float:
    """Seconds from starting the app to its first 200 from /predict."""
    port = free_port()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", json.dumps(PATIENT).encode(),
                                     {"Content-Type": "application/json"})
    started = time.perf_counter()
    app = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(port), "--poll-seconds", "0"], cwd=REPO,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while app.poll() is None:
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"the app exited with {app.returncode} before answering")
    finally:
        app.terminate()
        app.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare-rows", type=int, nargs="*", default=[])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as root:
        root = Path(root)
        bench = Bench(root)
        env = {**bench.env, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
        timed([sys.executable, "-m", "steps.main"], env)
        write_patients(one := root / "one.csv", 1, with_ids=False)
        (noop := root / "noop").mkdir()
        (noop / "MLproject").write_text("name: noop\nentry_points:\n  main:\n    command: python -c pass\n")
        commands = {
            "F: python -c 'import mlflow'": lambda: timed([sys.executable, "-c", "import mlflow"], env),
            "main, every step reused": lambda: timed([sys.executable, "-m", "steps.main"], env, True),
            "mlflow run . -e main, every step reused": lambda: timed(
                [str(BIN / "mlflow"), "run", str(REPO), "-e", "main", "--env-manager", "local",
                 "--experiment-name", bench.experiment], env, True),
            "mlflow run of an entry point that does nothing": lambda: timed(
                [str(BIN / "mlflow"), "run", str(noop), "-e", "main", "--env-manager", "local",
                 "--experiment-name", bench.experiment], env),
            "score, one patient": lambda: timed(
                [sys.executable, "-m", "tools.score", f"score.input={one}", f"score.output={root / 'one.parquet'}"],
                env),
            "leaderboard": lambda: timed([sys.executable, "-m", "tools.leaderboard"], env),
            "app, start to first answer": lambda: first_answer(env),
        }
        load_before = uptime()
        samples = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                samples[name].append(command())
        compared = [(rows, *score_against_predict(root, env, rows)) for rows in args.compare_rows]
        load_after = uptime()

    section = render(samples, compared, args, load_before, load_after)
    print(section)
    write_section(args.output, section)


def score_against_predict(root: Path, env: dict, rows: int) -> tuple[float, float]:
    """(score's wall seconds, mlflow models predict's) on one CSV of `rows` patients."""
    patients = root / f"patients-{rows}.csv"
    write_patients(patients, rows, with_ids=False)
    score = timed([sys.executable, "-m", "tools.score", f"score.input={patients}",
                   f"score.output={root / f'scored-{rows}.parquet'}"], env)
    predict = timed([str(BIN / "mlflow"), "models", "predict", "-m", "models:/heart-disease@champion", "-t", "csv",
                     "--env-manager", "local", "-i", str(patients), "-o", str(root / f"predicted-{rows}.json")], env)
    patients.unlink()
    return score, predict


def render(samples: dict[str, list[float]], compared: list, args, load_before: str, load_after: str) -> str:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    floor = next(iter(medians.values()))
    out = [MARKER_START, "## Start-up", "",
           f"`python scripts/benchmark_startup.py --repeats {args.repeats}"
           + (f" --compare-rows {' '.join(map(str, args.compare_rows))}" if args.compare_rows else "")
           + "`: each command on a store where the default pipeline has run once, interleaved, median of "
           f"{args.repeats}; F is `python -c \"import mlflow\"` measured in the same run.", "",
           f"Machine: {machine()}. Load before `{load_before}`, after `{load_after}`. "
           f"`mlflow run`'s collector pause (run.sh installs {Path(MLFLOW_RUN_SETTING).name}): "
           f"{'installed' if mlflow_run_setting_installed() else 'absent or an older copy'}.", "",
           "| command | median s | × F | goal | every run, s |", "| --- | ---: | ---: | ---: | --- |"]
    for name, median in medians.items():
        goal = GOALS.get(name)
        verdict = "" if goal is None else f"≤ {goal} F: {'met' if median / floor <= goal else 'NOT met'}"
        out.append(f"| {name} | {median:.2f} | {median / floor:.2f} | {verdict} | "
                   f"{', '.join(f'{v:.2f}' for v in samples[name])} |")
    if compared:
        out += ["", "| rows (CSV) | score wall s | mlflow models predict wall s | predict / score |",
                "| ---: | ---: | ---: | ---: |"]
        out += [f"| {rows:,} | {score:.1f} | {predict:.1f} | {predict / score:.1f}× |"
                for rows, score, predict in compared]
    out.append(MARKER_END)
    return "\n".join(out)


if __name__ == "__main__":
    main()
