"""Benchmark: batch scoring. Not a test: it measures and writes a table.

In one run, on a fresh SQLite store in a temp dir with the champion trained on the
Cleveland file:
  - `python -m tools.score` (pandas engine) on --rows synthetic patients (default 5M,
    Parquet): wall time, rows/s and the process's peak RSS (target <= 1.5 GB);
  - side by side on the same --compare-rows file (default 1M, CSV): `python -m tools.score`
    against `mlflow models predict -t csv` (target: score at least 10x faster), and both
    on a one-row CSV (median of three): their fixed start-up cost, and the speed-up past it.
Peak RSS is the largest resident set of the command's process tree (getrusage of a
fresh wrapper per command). Other agents share the 2 CPUs: `uptime` is recorded.

    python scripts/benchmark_score.py [--rows 5000000] [--compare-rows 1000000] [--output docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from benchmark_pipeline import Bench, machine, write_section  # noqa: E402

from domain.synthetic import generate  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MARKER_START = "<!-- score-benchmark:start -->"
MARKER_END = "<!-- score-benchmark:end -->"
GENERATE_ROWS = 500_000  # patients generated and written at a time


def write_patients(path: Path, rows: int, with_ids: bool = True) -> None:
    """Synthetic patients (with a patient_id unless told not to), written a slice at a time
    (Parquet or CSV)."""
    done, writer = 0, None
    while done < rows:
        frame = generate(min(GENERATE_ROWS, rows - done), seed=done).drop(columns=["num"])
        if with_ids:
            frame.insert(0, "patient_id", range(done, done + len(frame)))
        if path.suffix == ".csv":
            frame.to_csv(path, mode="a", header=done == 0, index=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table)
        done += len(frame)
    if writer:
        writer.close()


def measured(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of `command`, run in a fresh wrapper process."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
               "w = time.perf_counter() - t; "
               "sys.exit(r.stderr[-3000:]) if r.returncode else "
               "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    done = subprocess.run([sys.executable, "-c", wrapper, *command], env=env, cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"{command} failed:\n{done.stderr}")
    wall, peak = done.stdout.split()
    return float(wall), float(peak)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--compare-rows", type=int, default=1_000_000)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    if args.compare_rows < 2:
        parser.error("--compare-rows: at least 2 (the one-row runs are the baseline)")

    with tempfile.TemporaryDirectory(prefix="bench-score-") as root:
        root = Path(root)
        bench = Bench(root)
        subprocess.run([sys.executable, "-m", "steps.main"], cwd=REPO, env=bench.env, check=True, capture_output=True)
        big, small = root / "patients.parquet", root / "patients.csv"
        write_patients(big, args.rows)
        # Features only: the model refuses fields it does not know, and `mlflow models predict`
        # cannot leave an id column aside as score does.
        write_patients(small, args.compare_rows, with_ids=False)
        write_patients(one := root / "one.csv", 1, with_ids=False)
        score = [sys.executable, "-m", "tools.score"]
        commands = {  # name: (input, output) -> command line
            "score, pandas engine": lambda given, out: [*score, f"score.input={given}", f"score.output={out}.parquet"],
            "mlflow models predict": lambda given, out: [
                str(BIN / "mlflow"), "models", "predict", "-m", "models:/heart-disease@champion", "-t", "csv",
                "--env-manager", "local", "-i", str(given), "-o", f"{out}.json"],
        }
        lines = []

        load_before = uptime()
        wall, peak = measured([*score, "score.id_columns=[patient_id]", f"score.input={big}",
                               f"score.output={root / 'big.parquet'}"], bench.env)
        lines.append(("score, pandas engine", "Parquet", args.rows, wall, peak))
        # Each command on the same CSV, then on a one-row CSV (the median of three): what it
        # costs to start, load the model and finish, whatever the input's size.
        walls = {}
        for name, command in commands.items():
            for given, rows, repeats in ((small, args.compare_rows, 1), (one, 1, 3)):
                runs = sorted(measured(command(given, root / f"{given.stem}-{name[:5]}-{i}"), bench.env)
                              for i in range(repeats))
                wall, peak = runs[len(runs) // 2]
                lines.append((name, "CSV", rows, wall, peak))
                walls[name, rows] = wall
        load_after = uptime()

    section = render(lines, args, load_before, load_after, walls)
    print(section)
    write_section(args.output, section)


def render(lines, args, load_before: str, load_after: str, walls: dict) -> str:
    out = [MARKER_START, "## Batch scoring", "",
           f"`python scripts/benchmark_score.py --rows {args.rows} --compare-rows {args.compare_rows}`: the champion "
           "trained on the Cleveland file, synthetic patients (domain/synthetic.py); the Parquet file has a "
           "patient_id, the CSV files the 13 features only. Wall time includes start-up and model loading; peak "
           "RSS is the command's largest process. The one-row lines are what each command costs whatever the "
           "input's size (interpreter, imports, store, model).", "",
           f"Machine: {machine()}. Shared with other agents: load before `{load_before}`, after `{load_after}`.", "",
           "| command | input | rows | wall s | rows/s | peak RSS MB |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, fmt, rows, wall, peak in lines:
        out.append(f"| {name} | {fmt} | {rows:,} | {wall:.1f} | {f'{rows / wall:,.0f}' if rows > 1 else '–'} | "
                   f"{peak:,.0f} |")
    big_peak = lines[0][4]
    score, predict = "score, pandas engine", "mlflow models predict"
    on_wall = walls[predict, args.compare_rows] / walls[score, args.compare_rows]
    past_start = ((walls[predict, args.compare_rows] - walls[predict, 1])
                  / max(walls[score, args.compare_rows] - walls[score, 1], 1e-9))
    out += ["", f"- {args.rows:,} rows at {big_peak:,.0f} MB peak RSS (target ≤ 1,536 MB: "
                f"{'met' if big_peak <= 1536 else 'NOT met'}).",
            f"- Same {args.compare_rows:,}-row CSV, wall time: score {on_wall:.1f}× faster than "
            f"`mlflow models predict` (target ≥ 10×: {'met' if on_wall >= 10 else 'NOT met'}).",
            f"- The same, past start-up (wall on {args.compare_rows:,} rows minus wall on one row, for each "
            f"command): {past_start:.1f}×.", MARKER_END]
    return "\n".join(out)


if __name__ == "__main__":
    main()
