"""python -m serving [--host 127.0.0.1] [--port 8000] [--alias champion] ...

Starts the FastAPI app (serving/app.py) with uvicorn. One JSON log line per request
goes to stdout."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from serving.app import Settings, create_app


def main() -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--profile", default=defaults.profile, help="profiles/<name>.yaml or a path")
    parser.add_argument("--model-name", default=defaults.model_name)
    parser.add_argument("--alias", default=defaults.alias, help="registry alias to serve first")
    parser.add_argument("--model-dir", default=defaults.local_model_dir,
                        help="exported model directory, the last resort")
    parser.add_argument("--max-batch-rows", type=int, default=defaults.max_batch_rows)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    settings = Settings(profile=args.profile, model_name=args.model_name, alias=args.alias,
                        local_model_dir=args.model_dir, max_batch_rows=args.max_batch_rows)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
