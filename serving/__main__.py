"""python -m serving [--host 127.0.0.1] [--port 8000] [--alias champion] ...

Starts the FastAPI app (serving/app.py) with uvicorn. One JSON log line per request
goes to stdout."""

from __future__ import annotations

import argparse
import os

from serving.app import Settings
from serving.server import serve


def main() -> None:
    defaults = Settings.from_env()
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--profile", default=defaults.profile, help="profiles/<name>.yaml or a path")
    parser.add_argument("--model-name", default=defaults.model_name)
    parser.add_argument("--alias", default=defaults.alias, help="registry alias to serve first")
    parser.add_argument("--model-dir", default=defaults.local_model_dir,
                        help="exported model directory, the last resort")
    parser.add_argument("--max-batch-rows", type=int, default=defaults.max_batch_rows)
    parser.add_argument("--poll-seconds", type=float, default=defaults.poll_seconds,
                        help="how often to check whether the alias moved (0: only POST /reload)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes; with more than one, rely on --poll-seconds to switch models")
    args = parser.parse_args()
    settings = Settings(profile=args.profile, model_name=args.model_name, alias=args.alias,
                        local_model_dir=args.model_dir, max_batch_rows=args.max_batch_rows,
                        poll_seconds=args.poll_seconds)
    # uvicorn builds the app in each worker process: the settings travel in the environment.
    os.environ.update(settings.to_env())
    serve(host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()
