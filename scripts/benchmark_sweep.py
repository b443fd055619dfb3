"""Benchmark: what a sweep costs, against tuning by hand. Not a test: it measures and writes a table.

In one run, on the real Cleveland file and a fresh SQLite store in a temp dir, after one
`main` (so every way starts from the same cached upstream runs), 8 values of model.C:
  - sweep, sequential:   `mlflow run . -e sweep -P overrides="model.C=<8 values>"`
  - sweep, 2 workers:    the same with `hydra/launcher=joblib hydra.launcher.n_jobs=2`
  - by hand:             for each value, `mlflow run . -e train` then `mlflow run . -e evaluate`
                         (16 commands), what one would script without the sweep entry point
Wall seconds around the commands; every way must record 8 evaluated models.

And an Optuna study of STUDY_TRIALS trials (`search=logreg`, one trial at a time per worker,
the study in a SQLite file), after one `main` in a fresh store:
  - one worker:     `python -m tools.sweep search=logreg hydra.sweeper.storage=... hydra.sweeper.n_trials=12`
  - three workers:  the same command started three times at once, on one study
Wall seconds from the first start to the last exit; each way must leave STUDY_TRIALS complete
trials in the study and as many FINISHED trial runs tagged with it. The table records the
load average (`uptime`) before and after: other work on the machine slows every way.

    python scripts/benchmark_sweep.py [--part grid|study|both] [--repeats 3] [--output docs/BENCHMARKS.md]
        [--study-output docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_pipeline import REPO, Bench, machine, write_section  # noqa: E402  (one store set-up, one machine line)

VALUES = ["0.003", "0.01", "0.03", "0.06", "0.2", "0.3", "1", "3"]  # 0.1 is main's: trained already
MARKER_START = "<!-- sweep-benchmark:start -->"
MARKER_END = "<!-- sweep-benchmark:end -->"
STUDY_TRIALS = 12
STUDY_WORKERS = {"one worker": 1, "three workers, one study": 3}
STUDY_MARKER_START = "<!-- study-benchmark:start -->"
STUDY_MARKER_END = "<!-- study-benchmark:end -->"


def evaluated(bench: Bench) -> int:
    return len(bench.client.search_runs([bench.experiment_id], "tags.`pipeline.step` = 'evaluate'", max_results=1000))


def measure(root: Path) -> dict[str, float]:
    """Each way in a store of its own, from the same starting point: one cold `main`."""
    walls = {}
    ways = {
        "sweep, sequential (1 × mlflow run)": [("sweep", f"model.C={','.join(VALUES)}")],
        "sweep, 2 workers (1 × mlflow run)": [
            ("sweep", f"hydra/launcher=joblib hydra.launcher.n_jobs=2 model.C={','.join(VALUES)}")],
        "by hand (16 × mlflow run: train, evaluate)": [
            (step, f"model.C={value}") for value in VALUES for step in ("train", "evaluate")],
    }
    for number, (name, commands) in enumerate(ways.items()):
        (root / str(number)).mkdir()
        bench = Bench(root / str(number))
        bench.mlflow_run("main")
        before = evaluated(bench)
        walls[name] = sum(bench.mlflow_run(entry_point, overrides)[0] for entry_point, overrides in commands)
        assert evaluated(bench) - before == len(VALUES), f"{name}: not every value was evaluated"
    return walls


def render(samples: list[dict[str, float]], repeats: int) -> str:
    medians = {name: statistics.median(s[name] for s in samples) for name in samples[0]}
    by_hand = medians["by hand (16 × mlflow run: train, evaluate)"]
    rows = [f"| {name} | {wall:.1f} | {wall / len(VALUES):.1f} | {wall / by_hand:.2f} |"
            for name, wall in medians.items()]
    return "\n".join([
        MARKER_START,
        "## Sweeps",
        "",
        f"`python scripts/benchmark_sweep.py --repeats {repeats}`: 8 values of `model.C` trained and evaluated "
        "(5×10-fold CV each) on the real Cleveland file, each way in a fresh SQLite store after one `main`. "
        f"Median of {repeats} repeats, wall seconds.",
        "",
        f"Machine: {machine()}.",
        "",
        "| way | wall | per trial | vs by hand |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
        "- A sweep pays interpreter start-up, imports and the `mlflow run` launcher once; by hand pays "
        "them for each of the 16 commands.",
        "- 2 workers on 2 cores: trials run two at a time in joblib's worker processes. The gain is small "
        "because a trial's own work is short (about 3 s): each worker process pays Python, MLflow and "
        "scikit-learn imports once, and the sweep's own set-up (upstream look-up, leaderboard, cards) "
        "stays serial.",
        MARKER_END,
    ])


def study_command(root: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "tools.sweep", "search=logreg", f"hydra.sweeper.storage=sqlite:///{root}/study.db",
            f"hydra.sweeper.study_name={name}", f"hydra.sweeper.n_trials={STUDY_TRIALS}", "hydra.sweeper.n_jobs=1",
            "hydra/launcher=basic"]


def load() -> str:
    return os.popen("uptime").read().strip().split("load average:")[-1].strip()


def measure_study(root: Path) -> dict[str, tuple[float, str, str]]:
    """One store, one `main`, then each way on a study of its own: wall seconds from the
    first worker's start to the last one's exit, and the 1-minute load average at both."""
    bench = Bench(root)
    bench.mlflow_run("main")
    walls = {}
    for name, workers in STUDY_WORKERS.items():
        study_name = name.split(",")[0].replace(" ", "-")
        load_before = load().split(",")[0]
        started = time.perf_counter()
        logs = [root / f"{study_name}-{number}.log" for number in range(workers)]
        processes = [subprocess.Popen(study_command(root, study_name), cwd=REPO, env=bench.env,
                                      stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
        for process, log in zip(processes, logs):
            if process.wait():
                raise SystemExit(f"{name}: a worker exited {process.returncode}:\n{log.read_text()[-3000:]}")
        walls[name] = (time.perf_counter() - started, load_before, load().split(",")[0])
        trials = optuna.load_study(study_name=study_name, storage=f"sqlite:///{root}/study.db").get_trials()
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        runs = bench.client.search_runs([bench.experiment_id], f"tags.`sweep.study` = '{study_name}' and "
                                        "attributes.status = 'FINISHED'", max_results=1000)
        assert len(complete) == len(runs) == STUDY_TRIALS, f"{name}: {len(complete)} complete, {len(runs)} runs"
    return walls


def render_study(samples: list[dict[str, tuple[float, str, str]]], loads: tuple[str, str]) -> str:
    medians = {name: statistics.median(s[name][0] for s in samples) for name in samples[0]}
    one = medians["one worker"]
    rows = [f"| {name} | {wall:.1f} | {wall / STUDY_TRIALS:.1f} | {one / wall:.2f} | "
            f"{', '.join(f'{s[name][1]} → {s[name][2]}' for s in samples)} |" for name, wall in medians.items()]
    return "\n".join([
        STUDY_MARKER_START,
        "## One Optuna study, one worker or three",
        "",
        f"`python scripts/benchmark_sweep.py --part study --repeats {len(samples)}`: a study of "
        f"{STUDY_TRIALS} `search=logreg` trials (train + evaluate, 5×10-fold CV each) on the real Cleveland "
        "file, in a SQLite study file, after one `main` in a fresh store; each worker is "
        "`python -m tools.sweep search=logreg hydra.sweeper.storage=sqlite:///<tmp>/study.db "
        f"hydra.sweeper.study_name=<name> hydra.sweeper.n_trials={STUDY_TRIALS} hydra.sweeper.n_jobs=1 "
        "hydra/launcher=basic`, the three started at once. Wall seconds from the first start to the last exit, "
        f"median of {len(samples)} repeat(s); every way left {STUDY_TRIALS} complete trials and as many "
        "FINISHED trial runs.",
        "",
        f"Machine: {machine()}. Load average (1, 5, 15 min) before: {loads[0]}; after: {loads[1]} "
        "(other agents share the cores).",
        "",
        "| way | wall | per trial | speed-up | 1-min load, start → end (each repeat) |",
        "| --- | ---: | ---: | ---: | --- |",
        *rows,
        "",
        "- Each worker pays Python, MLflow and scikit-learn imports and the sweep's own set-up (upstream "
        "look-up, leaderboard, card) once; three workers pay it three times, at once.",
        "- On an idle 2-core machine three workers cannot beat 2×: three trials share two cores. On a "
        "loaded machine the speed-up measures the contention too: three processes get a larger share of "
        "the cores than one, and the load differs between the ways (last column), so a figure above 2 "
        "says more about the other work on the machine than about the sweeper.",
        STUDY_MARKER_END,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["grid", "study", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--study-output", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    if args.part in ("study", "both"):
        before, samples = load(), []
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="bench-study-") as root:
                samples.append(measure_study(Path(root)))
            print(f"study repeat {repeat + 1}: " + ", ".join(f"{k}: {w[0]:.1f}s" for k, w in samples[-1].items()))
        section = render_study(samples, (before, load()))
        print(section)
        write_section(args.study_output, section)
    if args.part == "study":
        return
    samples = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as root:
            samples.append(measure(Path(root)))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k}: {w:.1f}s" for k, w in samples[-1].items()))
    section = render(samples, args.repeats)
    print(section)
    write_section(args.output, section)


if __name__ == "__main__":
    main()
