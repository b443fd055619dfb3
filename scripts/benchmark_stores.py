"""Concurrent writers on two tracking stores, in one run: a SQLite file, and the team server
(PostgreSQL-backed `mlflow server` with the artifact proxy and basic-auth, scripts/team_server.py).

    python scripts/benchmark_stores.py [--processes 16] [--trials 5] [--output docs/BENCHMARKS.md]

Each of --processes worker processes runs --trials trial-like runs back to back, as a sweep
worker's trials do: create a run, log 10 params and 10 metrics over 5 steps in one batch, set
tags, upload a 64 KB artifact, finish the run. All workers start together. Per store: wall time
from the first start to the last exit, failed trials (any exception), and the FINISHED runs
the store holds afterwards. Needs PostgreSQL 15 binaries (scripts/team_server.py finds them).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import team_server  # noqa: E402  (scripts/team_server.py, beside this file)
from benchmark_pipeline import write_section  # noqa: E402

EXPERIMENT = "store-benchmark"


def trial_worker(experiment_id: str, trials: int, worker: int, scratch: Path) -> dict:
    """One process's trials; returns {"ok": n, "failed": n, "errors": [first few messages]}."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    artifact = scratch / f"worker-{worker}" / "trial.json"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_text(json.dumps({"padding": "x" * 65536}))
    ok, errors = 0, []
    for trial in range(trials):
        try:
            run = client.create_run(experiment_id, run_name=f"worker {worker} trial {trial}")
            now = int(time.time() * 1000)
            client.log_batch(
                run.info.run_id,
                params=[Param(f"param_{k}", str(k * trial)) for k in range(10)],
                metrics=[Metric(f"metric_{k}", float(k + step), now, step) for k in range(10) for step in range(5)],
                tags=[RunTag("benchmark.worker", str(worker)), RunTag("benchmark.trial", str(trial))])
            client.log_artifact(run.info.run_id, str(artifact))
            client.set_terminated(run.info.run_id)
            ok += 1
        except Exception as err:  # counted, not fatal: the next trial goes on, as a sweep's would
            errors.append(f"{type(err).__name__}: {str(err)[:200]}")
    return {"ok": ok, "failed": len(errors), "errors": errors[:3]}


def run_store(name: str, env: dict[str, str], processes: int, trials: int, scratch: Path) -> dict:
    """Start `processes` workers at once against the store in `env`; wall time and counts."""
    from mlflow.tracking import MlflowClient

    os.environ.update(env)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", experiment_id, str(trials), str(number),
                                 str(scratch)], env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
               for number in range(processes)]
    results = []
    for worker in workers:
        out, _ = worker.communicate()
        try:
            results.append(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):  # the process died before reporting: all its trials failed
            results.append({"ok": 0, "failed": trials, "errors": [f"worker exited {worker.returncode}"]})
    wall = time.perf_counter() - started
    finished = client.search_runs([experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    return {"store": name, "wall": wall, "failed": sum(r["failed"] for r in results), "recorded": len(finished),
            "expected": processes * trials, "errors": sorted({e for r in results for e in r["errors"]})[:3]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        experiment_id, trials, worker, scratch = sys.argv[2:6]
        print(json.dumps(trial_worker(experiment_id, int(trials), int(worker), Path(scratch))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--trials", type=int, default=5, help="trials per process")
    parser.add_argument("--server-workers", type=int, default=4, help="`mlflow server --workers`")
    parser.add_argument("--disable-telemetry", action="store_true",
                        help="MLFLOW_DISABLE_TELEMETRY=true in every process: MLflow's telemetry thread edits "
                             "os.environ while HTTP requests read it, which can fail a request")
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="store-benchmark-"))
    os.chmod(folder, 0o711)  # PostgreSQL runs as `postgres` when this runs as root
    base_env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    if args.disable_telemetry:
        base_env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ.clear()
    os.environ.update(base_env)
    load_before = _uptime()
    rows = []
    try:
        sqlite_env = {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'sqlite' / 'mlflow.db'}"}
        (folder / "sqlite").mkdir()
        rows.append(run_store("SQLite file (sqlite:///...)", sqlite_env, args.processes, args.trials,
                              folder / "scratch"))
        settings = team_server.Settings(dir=folder / "server", port=_free_port(), pg_port=_free_port(),
                                        workers=args.server_workers, log_file=folder / "mlflow-server.log")
        with team_server.TeamServer(settings) as server:
            password = secrets.token_urlsafe(16)
            import requests

            admin = (team_server.ADMIN_USERNAME, server.admin_password())
            requests.post(server.tracking_uri + "/api/2.0/mlflow/users/create", auth=admin, timeout=60,
                          json={"username": "bench", "password": password}).raise_for_status()
            server_env = {"MLFLOW_TRACKING_URI": server.tracking_uri, "MLFLOW_TRACKING_USERNAME": "bench",
                          "MLFLOW_TRACKING_PASSWORD": password}
            rows.append(run_store(f"team server: PostgreSQL 15, artifact proxy, basic-auth, {args.server_workers} "
                                  f"workers", server_env, args.processes, args.trials, folder / "scratch"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_after = _uptime()

    command = f"python scripts/benchmark_stores.py --processes {args.processes} --trials {args.trials}" + (
        f" --server-workers {args.server_workers}" if args.server_workers != 4 else "") + (
        " --disable-telemetry" if args.disable_telemetry else "")
    lines = [
        "<!-- stores-benchmark:start -->",
        "## Tracking stores under concurrent writers",
        "",
        f"`{command}`: {args.processes} processes started together, {args.trials} trial-like runs each "
        f"(create a run, 10 params and 10x5 metric values in one batch, tags, a 64 KB artifact, finish).",
        "",
        "| store | wall (s) | failed trials | runs recorded |",
        "|---|---|---|---|",
        *[f"| {r['store']} | {r['wall']:.1f} | {r['failed']} | {r['recorded']} of {r['expected']} |" for r in rows],
        "",
        f"- Load before: `{load_before}`; after: `{load_after}`. The machine has 2 cores shared with other "
        f"agents' work, so absolute times vary from run to run; the two stores ran back to back in one run.",
        "- Wall time includes each process's start-up (`import mlflow`, a few seconds of CPU each).",
    ]
    for row in rows:
        if row["errors"]:
            lines.append(f"- {row['store']}: first errors: " + "; ".join(f"`{e}`" for e in row["errors"]))
    lines.append("<!-- stores-benchmark:end -->")
    write_section(args.output, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
