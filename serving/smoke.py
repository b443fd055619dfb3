"""Smoke check of running servers, with the README's example patient.

    python -m serving.smoke                                   # FastAPI app on 127.0.0.1:8000
    python -m serving.smoke --mlflow-url http://127.0.0.1:5001   # and `mlflow models serve`

Prints each answer; exits 1 if any check fails."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

EXAMPLE = {"age": 54, "sex": 1, "cp": 4, "trestbps": 120, "chol": 240, "fbs": 0, "restecg": 0,
           "thalach": 160, "exang": 0, "oldpeak": 0.0, "slope": 1, "ca": 0, "thal": 3}
ORIGIN_CODING = {**EXAMPLE, "cp": 0, "thal": 2}  # another dataset's codes: must be refused


def call(url: str, body=None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the FastAPI app (python -m serving)")
    parser.add_argument("--mlflow-url", help="a `mlflow models serve` endpoint, checked too if given")
    args = parser.parse_args()
    checks = [
        ("GET /health", call(f"{args.url}/health"), 200),
        ("GET /model-info", call(f"{args.url}/model-info"), 200),
        ("POST /predict (UCI codes)", call(f"{args.url}/predict", EXAMPLE), 200),
        ("POST /predict (cp 0, thal 2: not UCI codes)", call(f"{args.url}/predict", ORIGIN_CODING), 400),
    ]
    if args.mlflow_url:
        checks += [
            ("POST /invocations (UCI codes)",
             call(f"{args.mlflow_url}/invocations", {"dataframe_records": [EXAMPLE]}), 200),
            ("POST /invocations (not UCI codes)",
             call(f"{args.mlflow_url}/invocations", {"dataframe_records": [ORIGIN_CODING]}), 400),
        ]
    failed = 0
    for name, (status, answer), expected in checks:
        ok = status == expected
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: HTTP {status} (expected {expected})\n"
              f"     {json.dumps(answer)[:400]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
