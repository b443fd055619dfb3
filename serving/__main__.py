"""python -m serving [--host 127.0.0.1] [--port 8000] [--alias champion] [--fallback run,dir] ...

Starts the FastAPI app (serving/app.py) with uvicorn. One JSON log line per request
goes to stdout; GET /metrics has the Prometheus metrics of all workers."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from engine import startup


def main() -> None:
    # Every worker's metrics in one folder, so /metrics adds them up (serving/metrics.py).
    # Set before the app is imported: prometheus_client reads it when metrics are made.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # see engine/cli.py quiet_third_parties
    metrics_dir = tempfile.mkdtemp(prefix="heart-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _serve_from_command_line()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_from_command_line() -> None:
    from serving import webhooks
    from serving.app import Settings
    from serving.server import serve

    defaults = Settings.from_env()
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--profile", default=defaults.profile, help="profiles/<name>.yaml or a path")
    parser.add_argument("--model-name", default=defaults.model_name)
    parser.add_argument("--alias", default=defaults.alias, help="registry alias to serve first")
    parser.add_argument("--fallback", default=defaults.fallback,
                        help="what to serve when the alias cannot be: 'run' (latest complete train run), "
                             "'dir' (--model-dir), or 'run,dir'; default: nothing (503)")
    parser.add_argument("--model-dir", default=defaults.local_model_dir,
                        help="exported model directory, for --fallback dir")
    parser.add_argument("--max-batch-rows", type=int, default=defaults.max_batch_rows)
    parser.add_argument("--poll-seconds", type=float, default=defaults.poll_seconds,
                        help="how often to check whether the alias moved (0: only POST /reload)")
    parser.add_argument("--retry-seconds", type=float, default=defaults.retry_seconds,
                        help="while the alias cannot be served, how often to try again")
    parser.add_argument("--log-inputs", default=defaults.log_inputs, metavar="DIR",
                        help="write every answered request (features and answers: PATIENT DATA) as Parquet "
                             "files in DIR, for `./run.sh monitor`; off by default")
    parser.add_argument("--inline-rows", type=int, default=defaults.inline_rows,
                        help="requests of at most this many patients are scored on the event loop (fast), "
                             "larger ones in a thread (the worker keeps answering health checks)")
    parser.add_argument("--reload-dir", default=os.environ.get(webhooks.RELOAD_DIR_ENV),
                        help="folder the workers share for webhook reload signals and the delivery ids seen "
                             "(default: a new temp folder)")
    parser.add_argument("--webhook-max-bytes", type=int, default=defaults.webhook_max_bytes,
                        help="longer webhook bodies are refused (413) before they are read whole")
    parser.add_argument("--webhook-max-depth", type=int, default=defaults.webhook_max_depth,
                        help="webhook bodies nested deeper are refused (400) before they are parsed")
    parser.add_argument("--webhook-max-age-seconds", type=float, default=defaults.webhook_max_age_seconds,
                        help="how far a webhook delivery's timestamp may be from now (older: 401); "
                             "its delivery id is remembered as long (again: 409)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes; they switch models on registry webhooks (HEART_WEBHOOK_SECRET) "
                             "or by polling (--poll-seconds)")
    args = parser.parse_args()
    settings = Settings(profile=args.profile, model_name=args.model_name, alias=args.alias,
                        local_model_dir=args.model_dir, max_batch_rows=args.max_batch_rows,
                        poll_seconds=args.poll_seconds, fallback=args.fallback, retry_seconds=args.retry_seconds,
                        log_inputs=args.log_inputs, inline_rows=args.inline_rows,
                        webhook_max_bytes=args.webhook_max_bytes, webhook_max_depth=args.webhook_max_depth,
                        webhook_max_age_seconds=args.webhook_max_age_seconds)
    try:
        settings.fallbacks()
    except ValueError as err:
        parser.error(str(err))
    # uvicorn builds the app in each worker process: the settings travel in the environment.
    os.environ.update(settings.to_env())
    if os.environ.get(webhooks.SECRET_ENV):
        os.environ[webhooks.RELOAD_DIR_ENV] = args.reload_dir or tempfile.mkdtemp(prefix="heart-serving-reload-")
    startup.resume()
    serve(host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()
