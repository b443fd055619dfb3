"""Benchmark: what a sweep costs, against tuning by hand. Not a test: it measures and writes a table.

In one run, on the real Cleveland file and a fresh SQLite store in a temp dir, after one
`main` (so every way starts from the same cached upstream runs), 8 values of model.C:
  - sweep, sequential:   `mlflow run . -e sweep -P overrides="model.C=<8 values>"`
  - sweep, 2 workers:    the same with `hydra/launcher=joblib hydra.launcher.n_jobs=2`
  - by hand:             for each value, `mlflow run . -e train` then `mlflow run . -e evaluate`
                         (16 commands), what one would script without the sweep entry point
Wall seconds around the commands; every way must record 8 evaluated models.

    python scripts/benchmark_sweep.py [--repeats 3] [--output docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_pipeline import Bench, machine, write_section  # noqa: E402  (one store set-up, one machine line)

VALUES = ["0.003", "0.01", "0.03", "0.06", "0.2", "0.3", "1", "3"]  # 0.1 is main's: trained already
MARKER_START = "<!-- sweep-benchmark:start -->"
MARKER_END = "<!-- sweep-benchmark:end -->"


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
    rows = [f"| {name} | {wall:.1f} | {wall / len(VALUES):.1f} | {wall / by_hand:.2f} |" for name, wall in medians.items()]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
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
