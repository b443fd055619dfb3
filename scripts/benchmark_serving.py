"""Benchmark: the same model three ways, side by side. Not a test: it measures and writes a table.

  - in-process  mlflow.pyfunc.load_model(...).predict(DataFrame)
  - /invocations  `mlflow models serve` (MLflow's scoring server)
  - /predict      the FastAPI app (python -m serving)

p50 / p99 latency and requests per second, at 1 and 8 concurrent clients, for 1-row
and 100-row bodies. Each HTTP client keeps one connection open. The model is trained
first on the real Cleveland file in a temp store; servers run on 127.0.0.1.

    python scripts/benchmark_serving.py [--requests 400] [--output docs/BENCHMARKS.md]
    python scripts/benchmark_serving.py --ways fastapi --workers 2   # one line quickly; no table written
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from benchmark_pipeline import Bench, machine, write_section  # noqa: E402  (same machine line in both tables)

from serving.smoke import EXAMPLE  # noqa: E402  (the patient every serving check sends)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MARKER_START = "<!-- serving-benchmark:start -->"
MARKER_END = "<!-- serving-benchmark:end -->"
WAYS = ("in-process", "mlflow", "fastapi")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict, health: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([*command, "--port", str(port)], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Ready when 20 health checks in a row, each on a new connection, pass: each worker of
    # the app loads its own model and answers 503 until then, so one ready worker does not
    # make the server ready. (MLflow's workers accept no connection before their model.)
    deadline, in_a_row = time.time() + 180, 0
    while time.time() < deadline and in_a_row < 20:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=2)
            in_a_row += 1
        except OSError:
            in_a_row = 0
            time.sleep(0.3)
    if in_a_row < 20:
        process.kill()
        raise SystemExit(f"{command} did not start")
    return process, port


def run_clients(call, clients: int, per_client: int) -> dict[str, float]:
    """Every client thread makes `per_client` calls back to back; returns latency
    percentiles (ms), throughput (requests/s) and errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        own, session = [], call.session()
        for _ in range(per_client):
            started = time.perf_counter()
            ok = call(session)
            own.append(time.perf_counter() - started)
            if not ok:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"p50": statistics.median(ordered) * 1000, "p99": ordered[int(0.99 * (len(ordered) - 1))] * 1000,
            "rps": len(ordered) / wall, "errors": errors[0]}


class InProcess:
    def __init__(self, model, rows: int):
        self.model, self.frame = model, pd.DataFrame([EXAMPLE] * rows, dtype="float64")

    def session(self):
        return None

    def __call__(self, _session) -> bool:
        return len(self.model.predict(self.frame)) == len(self.frame)


class Http:
    def __init__(self, port: int, path: str, body: object, rows: int):
        self.port, self.path, self.body, self.rows = port, path, json.dumps(body).encode(), rows

    def session(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def __call__(self, connection) -> bool:
        connection.request("POST", self.path, self.body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        return response.status == 200 and len(payload) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per configuration")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS),
                        help="measure only these (then the figures are printed, not written to --output)")
    parser.add_argument("--workers", nargs="+", type=int, choices=(1, 2), default=[1, 2],
                        help="server worker counts to measure (same rule for --output)")
    args = parser.parse_args()
    complete = set(args.ways) == set(WAYS) and set(args.workers) == {1, 2}

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as root:
        bench = Bench(Path(root))  # a fresh store and the environment that points the steps at it
        tracking_uri, env = bench.tracking_uri, bench.env
        subprocess.run([sys.executable, "-m", "steps.main"], cwd=REPO, env=env, check=True, capture_output=True)
        mlflow.set_tracking_uri(tracking_uri)
        model = mlflow.pyfunc.load_model("models:/heart-disease@champion")

        servers, ports = [], {}
        for workers in args.workers:
            for way, name, command, health in (
                ("mlflow", "mlflow models serve /invocations", [str(BIN / "mlflow"), "models", "serve", "-m",
                 "models:/heart-disease@champion", "--env-manager", "local", "--host", "127.0.0.1"], "/ping"),
                ("fastapi", "FastAPI /predict", [sys.executable, "-m", "serving"], "/health"),
            ):
                if way not in args.ways:
                    continue
                process, port = start([*command, "--workers", str(workers)], env, health)
                servers.append(process)
                ports[(name, workers)] = port
        try:
            results = []
            for rows in (1, 100):
                ways = {("in-process pyfunc predict", 0): InProcess(model, rows)} if "in-process" in args.ways else {}
                for (name, workers), port in ports.items():
                    path = "/invocations" if "invocations" in name else "/predict"
                    body = ({"dataframe_records": [EXAMPLE] * rows} if path == "/invocations"
                            else EXAMPLE if rows == 1 else [EXAMPLE] * rows)
                    ways[(name, workers)] = Http(port, path, body, rows)
                for (name, workers), call in ways.items():
                    for clients in (1, 8):
                        run_clients(call, clients, 20)  # warm-up
                        stats = run_clients(call, clients, max(1, args.requests // clients))
                        results.append((rows, name, workers, clients, stats))
                        print(f"{rows:>3} rows  {name:<34} {workers} worker(s) {clients} client(s): "
                              f"p50 {stats['p50']:.2f} ms, p99 {stats['p99']:.2f} ms, {stats['rps']:.0f} req/s, "
                              f"{stats['errors']} errors")
        finally:
            for process in servers:
                process.terminate()
                process.wait(timeout=30)

    if not complete:
        print(f"only {args.ways} with {args.workers} worker(s) measured: {args.output} left as it is")
        return
    section = render(results, args.requests)
    print(section)
    write_section(args.output, section)


def render(results, requests: int) -> str:
    lines = [MARKER_START, "## Serving", "",
             f"`python scripts/benchmark_serving.py --requests {requests}`: the champion trained on the Cleveland "
             f"file; {requests} requests per line after 20 warm-up requests per client; one keep-alive connection "
             "per client thread; servers on 127.0.0.1 with 1 or 2 uvicorn worker processes (`--workers`); the "
             "client threads share the machine's 2 cores with the servers.", "", f"Machine: {machine()}.", "",
             "| rows per request | way | workers | clients | p50 ms | p99 ms | requests/s | errors |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for rows, name, workers, clients, s in results:
        lines.append(f"| {rows} | {name} | {workers or '-'} | {clients} | {s['p50']:.2f} | {s['p99']:.2f} | "
                     f"{s['rps']:.0f} | {s['errors']} |")
    lines.append("")
    lookup = {(rows, name, workers, clients): s for rows, name, workers, clients, s in results}
    alone = lookup[(1, "in-process pyfunc predict", 0, 1)]["p50"]
    app = lookup[(1, "FastAPI /predict", 2, 8)]
    fast_enough = app["rps"] >= 1000 and app["p50"] < 5
    lines += [f"- One patient in-process: p50 {alone:.2f} ms "
              f"(target ≤ 0.5 ms: {'met' if alone <= 0.5 else 'NOT met'}).",
              f"- The FastAPI app, 2 workers, 8 clients, one patient per request: {app['rps']:.0f} requests/s at p50 "
              f"{app['p50']:.2f} ms "
              f"(target ≥ 1,000 requests/s with p50 < 5 ms: {'met' if fast_enough else 'NOT met'})."]
    for rows in (1, 100):
        base = lookup[(rows, "in-process pyfunc predict", 0, 1)]["p50"]
        for name in ("mlflow models serve /invocations", "FastAPI /predict"):
            for workers in (1, 2):
                one, eight = lookup[(rows, name, workers, 1)], lookup[(rows, name, workers, 8)]
                gap = one["p50"] - base
                lines.append(
                    f"- {rows} row(s), {name}, {workers} worker(s): p50 {gap:+.2f} ms against in-process "
                    f"(target ≤ 3 ms: {'met' if gap <= 3 else 'NOT met'}); 8 clients {eight['rps']:.0f} req/s "
                    f"against {one['rps']:.0f} at 1 "
                    f"(target not lower: {'met' if eight['rps'] >= one['rps'] else 'NOT met'}).")
    errors = sum(s["errors"] for *_, s in results)
    lines += [f"- Errors: {errors} (target 0: {'met' if errors == 0 else 'NOT met'}).",
              "- In-process at 8 clients is 8 threads in one interpreter sharing one GIL: it shows what threads "
              "cost, not a way to serve.",
              MARKER_END]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
