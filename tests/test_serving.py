"""Both servers for real: `mlflow models serve` and the FastAPI app (python -m serving),
each a subprocess on a free loopback port, on a model trained in this test session.
Every endpoint, and a corpus of bad requests that must get a 4xx naming the problem
while the server stays up."""

import http.server
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.conftest import BIN, REPO, make_store

pytestmark = pytest.mark.e2e

PATIENT = {"age": 54, "sex": 1, "cp": 4, "trestbps": 120, "chol": 240, "fbs": 0, "restecg": 0,
           "thalach": 160, "exang": 0, "oldpeak": 0.0, "slope": 1, "ca": 0, "thal": 3}
ORIGIN_EXAMPLE = {**PATIENT, "cp": 0, "thal": 2}  # the origin document's body, in another dataset's coding
ANSWER_KEYS = {"prediction", "probability", "confidence", "risk_level"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url, body=None, content_type="application/json", method=None, raw=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": content_type} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers=headers,
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


class Server:
    def __init__(self, command, env, health_path, tmp_path, name, cwd=REPO):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"{name}.log"
        self.process = subprocess.Popen([*command, "--port", str(self.port)], env=env, cwd=cwd,
                                        stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        # The app answers at once and each worker loads in the background: started when ten
        # answers in a row (each on a new connection, so any worker may take it) say the
        # first attempt is over.
        deadline, in_a_row = time.time() + 120, 0
        while time.time() < deadline and in_a_row < 10:
            if self.process.poll() is not None:
                raise AssertionError(f"{name} exited early:\n{self.log.read_text()}")
            try:
                status, body = request(self.base + health_path)
            except OSError:
                body = None
            if body is None or isinstance(body, dict) and body.get("status") == "loading":
                in_a_row = 0
                time.sleep(0.3)
            else:
                in_a_row += 1
        if in_a_row < 10:
            raise AssertionError(f"{name} did not start:\n{self.log.read_text()}")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(trained, tmp_path_factory):
    server = Server([str(BIN / "mlflow"), "models", "serve", "-m", "models:/heart-disease@champion",
                     "--env-manager", "local", "--host", "127.0.0.1"], trained.env, "/ping",
                    tmp_path_factory.mktemp("logs"), "mlflow-serve")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(trained, tmp_path_factory):
    # No polling here: the reload test below decides when the model changes.
    server = Server([sys.executable, "-m", "serving", "--poll-seconds", "0"], trained.env, "/health",
                    tmp_path_factory.mktemp("logs"), "fastapi")
    yield server
    server.stop()


# --------------------------------------------------------------------------- mlflow models serve

@pytest.mark.parametrize("body, content_type", [
    ({"dataframe_records": [PATIENT, {**PATIENT, "ca": None}]}, "application/json"),
    ({"dataframe_split": {"columns": list(PATIENT), "data": [list(PATIENT.values())] * 2}}, "application/json"),
    ({"inputs": {k: [v, v] for k, v in PATIENT.items()}}, "application/json"),
    (",".join(PATIENT) + "\n" + ("\n".join([",".join(str(v) for v in PATIENT.values())] * 2)) + "\n", "text/csv"),
])
def test_mlflow_serve_answers_in_full(mlflow_server, trained, body, content_type):
    raw = body.encode() if isinstance(body, str) else None
    status, answer = request(mlflow_server.base + "/invocations", None if raw else body, content_type, raw=raw)
    assert status == 200, answer
    rows = answer["predictions"]
    assert len(rows) == 2
    for row in rows:
        assert ANSWER_KEYS <= set(row)
        assert row["prediction"] in (0, 1) and 0 <= row["probability"] <= 1
        assert row["confidence"] == pytest.approx(max(row["probability"], 1 - row["probability"]))
        assert row["risk_level"] in ("Low", "Moderate", "High")
        assert row["model_name"] == "heart-disease" and row["model_version"] == "1"
        champion = trained.client.get_model_version_by_alias("heart-disease", "champion")
        assert row["run_id"] == champion.run_id and row["model_id"].startswith("m-")


def test_origin_example_gets_400_explaining_uci_codes(mlflow_server, api):
    status, answer = request(mlflow_server.base + "/invocations", {"dataframe_records": [ORIGIN_EXAMPLE]})
    assert status == 400
    for text in ("column 'cp'", "code in [1, 2, 3, 4]", "asymptomatic", "e.g. [0]",
                 "column 'thal'", "code in [3, 6, 7]"):
        assert text in answer["message"]
    status, answer = request(api.base + "/predict", ORIGIN_EXAMPLE)
    assert status == 400 and "column 'cp'" in answer["detail"] and "code in [3, 6, 7]" in answer["detail"]


MLFLOW_BAD = {
    "malformed JSON": (dict(raw=b'{"dataframe_records": [{"age": 54,'), None),
    "empty body": (dict(raw=b""), None),
    "wrong content type": (dict(raw=json.dumps({"dataframe_records": [PATIENT]}).encode(), content_type="text/plain"),
                           None),
    "missing field": (dict(body={"dataframe_records": [{k: v for k, v in PATIENT.items() if k != "chol"}]}), "chol"),
    "wrong type": (dict(body={"dataframe_records": [{**PATIENT, "age": "old"}]}), "age"),
    "boolean for a number": (dict(body={"dataframe_records": [{**PATIENT, "ca": True}]}),
                             "column 'ca': rule 'a number"),
    "numeric string": (dict(body={"dataframe_records": [{**PATIENT, "age": "54"}]}), "column 'age': rule 'a number"),
    "null where required": (dict(body={"dataframe_records": [{**PATIENT, "trestbps": None}]}), "trestbps"),
    "NaN": (dict(raw=json.dumps({"dataframe_records": [{**PATIENT, "age": float("nan")}]}).encode()), "age"),
    "Infinity": (dict(raw=json.dumps({"dataframe_records": [{**PATIENT, "chol": float("inf")}]}).encode()), "chol"),
    "out of range": (dict(body={"dataframe_records": [{**PATIENT, "trestbps": 20}]}), "50 <= value <= 300"),
    "out of codebook": (dict(body={"dataframe_records": [{**PATIENT, "slope": 0}]}), "code in [1, 2, 3]"),
    "empty list": (dict(body={"dataframe_records": []}), None),
}


@pytest.mark.parametrize("case", list(MLFLOW_BAD))
def test_mlflow_serve_bad_requests_get_4xx_and_server_stays_up(mlflow_server, case):
    kwargs, must_mention = MLFLOW_BAD[case]
    status, answer = request(mlflow_server.base + "/invocations", kwargs.get("body"),
                             kwargs.get("content_type", "application/json"), raw=kwargs.get("raw"))
    assert 400 <= status < 500, (status, answer)
    if must_mention:
        assert must_mention in json.dumps(answer), answer
    assert request(mlflow_server.base + "/health")[0] == 200


def test_mlflow_serve_refuses_an_extra_field_like_the_app(mlflow_server):
    """The model has no input schema for MLflow to enforce (engine/logged_model.py), so the
    model's own check sees every field and refuses unknown ones, as the FastAPI app does."""
    status, answer = request(mlflow_server.base + "/invocations", {"dataframe_records": [{**PATIENT, "colour": 3}]})
    assert status == 400 and "column 'colour': rule 'known field'" in answer["message"]


def test_mlflow_serve_large_batch(mlflow_server):
    status, answer = request(mlflow_server.base + "/invocations", {"dataframe_records": [PATIENT] * 10_000})
    assert status == 200 and len(answer["predictions"]) == 10_000


# --------------------------------------------------------------------------- FastAPI app

def test_predict_one_and_many(api):
    status, one = request(api.base + "/predict", PATIENT)
    assert status == 200
    assert ANSWER_KEYS <= set(one)
    assert one["model_name"] == "heart-disease" and one["model_version"] == "1" and one["model_alias"] == "champion"
    status, many = request(api.base + "/predict", [PATIENT, {**PATIENT, "ca": None, "thal": None}])
    assert status == 200 and len(many) == 2
    assert many[0] == {**one, "probability": pytest.approx(one["probability"]),
                       "confidence": pytest.approx(one["confidence"])}  # batch maths may differ in the last bit


def test_same_answers_from_both_servers(api, mlflow_server):
    _, via_api = request(api.base + "/predict", PATIENT)
    _, via_mlflow = request(mlflow_server.base + "/invocations", {"dataframe_records": [PATIENT]})
    for key in ANSWER_KEYS:
        assert via_api[key] == pytest.approx(via_mlflow["predictions"][0][key])


def assert_explains(answer: dict, patient: dict) -> None:
    """One explanation per input field, largest first, each with the patient's value, and
    base + contributions = the log-odds of the answer's probability."""
    explanation = answer["explanation"]
    entries = explanation["contributions"]
    assert sorted(e["feature"] for e in entries) == sorted(PATIENT)  # all 13 fields, once each
    assert [abs(e["contribution"]) for e in entries] == sorted((abs(e["contribution"]) for e in entries), reverse=True)
    assert {e["feature"]: e["value"] for e in entries} == patient
    p = answer["probability"]
    log_odds = explanation["base_log_odds"] + sum(e["contribution"] for e in entries)
    assert log_odds == pytest.approx(math.log(p / (1 - p)), abs=1e-9)
    assert "explanation_unavailable" not in answer


def test_both_servers_explain_their_answers_on_request(api, mlflow_server):
    patients = [PATIENT, {**PATIENT, "ca": None, "thal": None, "cp": 1, "sex": 0}]
    status, via_api = request(api.base + "/predict?explain=true", patients)
    assert status == 200
    status, via_mlflow = request(mlflow_server.base + "/invocations",
                                 {"dataframe_records": patients, "params": {"explain": True}})
    assert status == 200, via_mlflow
    via_mlflow = via_mlflow["predictions"]
    for answers in (via_api, via_mlflow):
        for answer, patient in zip(answers, patients):
            assert_explains(answer, patient)
    assert via_api[0]["explanation"]["contributions"] == [
        {**entry, "contribution": pytest.approx(entry["contribution"], abs=1e-12)}
        for entry in via_mlflow[0]["explanation"]["contributions"]]
    status, one = request(api.base + "/predict?explain=true", PATIENT)
    assert status == 200 and one["explanation"] == via_api[0]["explanation"]
    # Without the flag the answers are as before: no explanation.
    assert "explanation" not in request(api.base + "/predict", PATIENT)[1]
    assert "explanation" not in request(mlflow_server.base + "/invocations",
                                        {"dataframe_records": [PATIENT]})[1]["predictions"][0]
    assert request(api.base + "/predict?explain=perhaps", PATIENT)[0] == 422


def test_model_info_and_health(api, trained):
    status, info = request(api.base + "/model-info")
    assert status == 200
    champion = trained.client.get_model_version_by_alias("heart-disease", "champion")
    assert ((info["name"], info["version"], info["alias"], info["source"])
            == ("heart-disease", "1", "champion", "registry"))
    assert info["run_id"] == champion.run_id
    assert info["training_data_sha256"] == "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8"
    assert info["training_data_digest"] and info["trained_at"]
    assert 0.8 <= info["metrics"]["cv_roc_auc_mean"] <= 1 and info["validation_status"] == "VALIDATED"
    assert request(api.base + "/health") == (200, {"status": "ok", "model_source": "registry",
                                                   "model_name": "heart-disease", "model_version": "1",
                                                   "model_alias": "champion"})
    assert request(api.base + "/openapi.json")[0] == 200
    with urllib.request.urlopen(api.base + "/docs") as docs:
        assert docs.status == 200 and b"swagger" in docs.read().lower()


API_BAD = {
    "malformed JSON": (dict(raw=b'{"age": 54,'), 422, "JSON decode error"),
    "empty body": (dict(raw=b""), 422, "body"),
    "wrong content type": (dict(raw=json.dumps(PATIENT).encode(), content_type="text/plain"), 415, "application/json"),
    "missing field": (dict(body={k: v for k, v in PATIENT.items() if k != "chol"}), 422, "chol"),
    "extra field": (dict(body={**PATIENT, "colour": 3}), 422, "colour"),
    "wrong type": (dict(body={**PATIENT, "age": "old"}), 422, "age"),
    "boolean for a number": (dict(body={**PATIENT, "ca": True}), 422, "ca"),
    "numeric string": (dict(body={**PATIENT, "age": "54"}), 422, "age"),
    "null where required": (dict(body={**PATIENT, "trestbps": None}), 400, "trestbps"),
    "NaN": (dict(raw=json.dumps({**PATIENT, "age": float("nan")}).encode()), 422, "age"),
    "Infinity": (dict(raw=json.dumps({**PATIENT, "chol": float("inf")}).encode()), 422, "chol"),
    "out of range": (dict(body={**PATIENT, "trestbps": 20}), 400, "50 <= value <= 300"),
    "out of codebook": (dict(body={**PATIENT, "slope": 0}), 400, "code in [1, 2, 3]"),
    "empty list": (dict(body=[]), 400, "at least one patient"),
    "too many rows": (dict(body=[PATIENT] * 10_001), 413, "at most 10000"),
}


@pytest.mark.parametrize("case", list(API_BAD))
def test_api_bad_requests_get_4xx_naming_the_problem(api, case):
    kwargs, expected_status, must_mention = API_BAD[case]
    status, answer = request(api.base + "/predict", kwargs.get("body"), kwargs.get("content_type", "application/json"),
                             raw=kwargs.get("raw"))
    assert status == expected_status, (status, answer)
    assert must_mention in json.dumps(answer), answer
    assert request(api.base + "/health")[0] == 200


def test_api_large_batch(api):
    status, answer = request(api.base + "/predict", [PATIENT] * 10_000)
    assert status == 200 and len(answer) == 10_000


def test_api_logs_one_structured_line_per_request(api):
    def logged():
        return [json.loads(line) for line in api.log.read_text().splitlines() if line.startswith('{"method"')]

    before = len(logged())
    request(api.base + "/health")
    # The server writes the line after answering: wait for it rather than race it.
    deadline, lines = time.time() + 10, logged()
    while (len(lines) == before or lines[-1]["path"] != "/health") and time.time() < deadline:
        time.sleep(0.05)
        lines = logged()
    assert len(lines) > before and {"method", "path", "status", "latency_ms", "model_version"} <= set(lines[-1])
    assert lines[-1]["path"] == "/health" and lines[-1]["status"] == 200


def test_reload_switches_to_a_new_champion_without_restart(api, trained):
    # Another model (one logged model is one version): v2
    trained.in_process("steps.main", "model.C=0.3", "evaluate.cv_repeats=1")
    trained.client.set_registered_model_alias("heart-disease", "champion", "2")
    assert request(api.base + "/health")[1]["model_version"] == "1"
    status, health = request(api.base + "/reload", method="POST", raw=b"")
    assert status == 200 and health["model_version"] == "2"
    assert request(api.base + "/predict", PATIENT)[1]["model_version"] == "2"


def new_version_of_the_champion(store) -> str:
    """A further version of the champion's logged model, with its validation tags: the
    registry's view of a new champion, without training one."""
    mlflow.set_tracking_uri(store.tracking_uri)  # where MLflow looks the champion's logged model up
    champion = store.client.get_model_version_by_alias("heart-disease", "champion")
    version = store.client.create_model_version("heart-disease", champion.source, run_id=champion.run_id,
                                                tags=champion.tags)
    return str(version.version)


def copied_version_of_the_champion(store, tmp_path, damage) -> str:
    """A further version of the champion with files of its own (a copy), damaged by
    `damage(model folder)`: a new champion whose files break, leaving the champion's intact."""
    mlflow.set_tracking_uri(store.tracking_uri)
    champion = store.client.get_model_version_by_alias("heart-disease", "champion")
    copy = Path(mlflow.artifacts.download_artifacts(f"models:/heart-disease/{champion.version}",
                                                    dst_path=str(tmp_path / "copy")))
    damage(copy)
    return str(store.client.create_model_version("heart-disease", str(copy), run_id=champion.run_id,
                                                 tags=champion.tags).version)


def truncate_the_stored_scorer(model: Path) -> None:
    """The file a load reads to answer (the fitted pipeline is read only when asked for)."""
    stored = model / "artifacts" / "scorer.npz"
    stored.write_bytes(stored.read_bytes()[:1000])


def ask_for_pickle(model: Path) -> None:
    import yaml

    mlmodel = model / "artifacts" / "pipeline" / "MLmodel"
    spec = yaml.safe_load(mlmodel.read_text())
    spec["flavors"]["sklearn"]["serialization_format"] = "pickle"
    mlmodel.write_text(yaml.safe_dump(spec))


def healthy(version: str) -> dict:
    return {"status": "ok", "model_name": "heart-disease", "model_version": version, "model_alias": "champion",
            "model_source": "registry"}


def degraded(alias_version: str, served: str, reason: str) -> dict:
    return {"status": "degraded", "reason": reason, "alias_version": alias_version, "model_name": "heart-disease",
            "model_version": served, "model_alias": None, "model_source": "registry"}


def assert_answers_as(api, version: str, alias) -> None:
    status, answer = request(api.base + "/predict", PATIENT)
    assert status == 200 and (answer["model_version"], answer["model_alias"]) == (version, alias)
    assert request(api.base + "/model-info")[1]["alias"] == alias


@pytest.mark.parametrize("damage, cause", [(truncate_the_stored_scorer, "registry: "),
                                           (ask_for_pickle, "artifacts/pipeline is saved as 'pickle'")],
                         ids=["broken files", "refused by the loader"])
def test_a_new_champion_that_fails_to_load_leaves_the_app_degraded_and_saying_so(api, trained, tmp_path, damage,
                                                                                   cause):
    """The version loaded before keeps answering (a load balancer should keep routing: 200),
    but neither /health nor the answers claim it is the champion any more."""
    served = request(api.base + "/health")[1]["model_version"]
    broken = copied_version_of_the_champion(trained, tmp_path, damage)
    trained.client.set_registered_model_alias("heart-disease", "champion", broken)
    try:
        status, health = request(api.base + "/reload", method="POST", raw=b"")
        assert status == 200 and health == degraded(broken, served, health["reason"])
        assert health["reason"].startswith(f"heart-disease@champion names version {broken}, which failed to load: ")
        assert cause in health["reason"]
        assert request(api.base + "/health") == (200, health)
        assert_answers_as(api, served, None)
    finally:
        trained.client.set_registered_model_alias("heart-disease", "champion", served)
        trained.client.delete_model_version("heart-disease", broken)
    assert request(api.base + "/reload", method="POST", raw=b"") == (200, healthy(served))
    assert_answers_as(api, served, "champion")


class HeldBackArtifacts(http.server.BaseHTTPRequestHandler):
    """An MLflow artifact proxy (the mlflow-artifacts API: a JSON listing and file reads)
    serving one model folder, that holds back one file until `release` is set."""

    folder: Path
    held: str
    release: threading.Event
    PREFIX = "/mlflow-artifacts/artifacts"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == self.PREFIX:
            inside = self.folder / "/".join(urllib.parse.parse_qs(url.query)["path"][0].split("/")[1:])
            files = [{"path": child.name, "is_dir": child.is_dir(), "file_size": child.stat().st_size}
                     for child in sorted(inside.iterdir())]
            body = json.dumps({"files": files}).encode()
        else:
            relative = url.path[len(self.PREFIX) + 1:].split("/", 1)[1]
            if relative == self.held:
                self.release.wait(30)
            body = (self.folder / relative).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_while_the_new_champion_loads_the_app_says_which_version_answers(api, trained, tmp_path):
    """The new champion's files come from an artifact proxy that holds its fitted pipeline
    back until the test releases it, so /health is asked while the load is under way."""
    served = request(api.base + "/health")[1]["model_version"]
    mlflow.set_tracking_uri(trained.tracking_uri)
    champion = trained.client.get_model_version_by_alias("heart-disease", "champion")
    copy = Path(mlflow.artifacts.download_artifacts(f"models:/heart-disease/{champion.version}",
                                                    dst_path=str(tmp_path / "copy")))
    release = threading.Event()
    handler = type("Handler", (HeldBackArtifacts,), {"folder": copy, "held": "artifacts/pipeline/model.skops",
                                                     "release": release})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    source = f"http://127.0.0.1:{proxy.server_address[1]}{HeldBackArtifacts.PREFIX}/model"
    loading = str(trained.client.create_model_version("heart-disease", source, run_id=champion.run_id,
                                                      tags=champion.tags).version)
    trained.client.set_registered_model_alias("heart-disease", "champion", loading)
    reloaded = []
    reload = threading.Thread(target=lambda: reloaded.append(request(api.base + "/reload", method="POST", raw=b"")))
    reload.start()
    try:
        deadline = time.time() + 20
        while (health := request(api.base + "/health"))[1]["status"] == "ok" and time.time() < deadline:
            time.sleep(0.05)
        assert health == (200, degraded(loading, served, f"heart-disease@champion names version {loading}, "
                                                         "which is loading"))
        assert_answers_as(api, served, None)
    finally:
        release.set()
        reload.join(60)
        proxy.shutdown()
        proxy.server_close()
        trained.client.set_registered_model_alias("heart-disease", "champion", served)
        trained.client.delete_model_version("heart-disease", loading)
    # Released, the files are whole and sealed: the new version loads.
    assert reloaded[0][1]["status"] == "ok" and reloaded[0][1]["model_version"] == loading
    assert request(api.base + "/reload", method="POST", raw=b"") == (200, healthy(served))


def test_workers_follow_the_alias_by_polling(trained, tmp_path):
    server = Server([sys.executable, "-m", "serving", "--workers", "2", "--poll-seconds", "1"], trained.env,
                    "/health", tmp_path, "polling")
    try:
        before = trained.client.get_model_version_by_alias("heart-disease", "champion").version
        newest = new_version_of_the_champion(trained)
        trained.client.set_registered_model_alias("heart-disease", "champion", newest)
        assert newest != str(before)
        deadline = time.time() + 30
        seen = set()
        while time.time() < deadline and seen != {newest}:
            time.sleep(0.5)
            # several requests: they may land on either worker
            seen = {request(server.base + "/health")[1].get("model_version") for _ in range(6)}
        assert seen == {newest}
    finally:
        server.stop()


# --------------------------------------------------------------------------- what is served

def started(options, env, tmp_path, name):
    return Server([sys.executable, "-m", "serving", "--poll-seconds", "0", *options], env, "/health", tmp_path, name)


def test_a_mistyped_alias_is_503_with_the_reason_not_another_model(trained, tmp_path):
    server = started(["--alias", "champoin"], trained.env, tmp_path, "typo")
    try:
        status, health = request(server.base + "/health")
        assert status == 503 and health["status"] == "unavailable"
        assert "heart-disease@champoin does not exist" in health["reason"]
        status, answer = request(server.base + "/predict", PATIENT)
        assert status == 503 and "champoin" in answer["detail"]
    finally:
        server.stop()


def test_a_version_that_is_not_validated_is_not_served(trained, tmp_path):
    champion = trained.client.get_model_version_by_alias("heart-disease", "champion")
    trained.client.set_registered_model_alias("heart-disease", "unchecked", champion.version)
    trained.client.set_model_version_tag("heart-disease", champion.version, "validation.status", "REJECTED")
    try:
        server = started(["--alias", "unchecked"], trained.env, tmp_path, "rejected")
        try:
            status, health = request(server.base + "/health")
            assert status == 503 and f"version {champion.version} (@unchecked) is REJECTED" in health["reason"]
        finally:
            server.stop()
    finally:
        trained.client.set_model_version_tag("heart-disease", champion.version, "validation.status", "VALIDATED")
        trained.client.delete_registered_model_alias("heart-disease", "unchecked")


def assert_serves_fallback(source, options, env, tmp_path):
    server = started(options, env, tmp_path, f"fallback-{source}")
    try:
        status, health = request(server.base + "/health")
        assert status == 200 and health["status"] == "fallback" and health["model_source"] == source
        assert "does not exist" in health["reason"]
        status, answer = request(server.base + "/predict", PATIENT)
        assert status == 200 and answer["model_source"] == source  # every answer says where it came from
    finally:
        server.stop()


def test_fallback_to_the_latest_train_run_only_when_asked(trained, tmp_path):
    assert_serves_fallback("run", ["--alias", "no-such-alias", "--fallback", "run"], trained.env, tmp_path)


def test_fallback_to_a_local_directory_only_when_asked(trained, tmp_path):
    exported = tmp_path / "exported"
    mlflow.set_tracking_uri(trained.tracking_uri)
    mlflow.artifacts.download_artifacts("models:/heart-disease@champion", dst_path=str(exported))
    empty = make_store(tmp_path / "empty")
    # The app beside the empty store gets the team's public key there (engine/seal.py).
    (empty.root / "keys").mkdir()
    shutil.copy(trained.root / "keys" / "seal.pub", empty.root / "keys")
    assert_serves_fallback("dir", ["--fallback", "run,dir", "--model-dir", str(exported)], empty.env, tmp_path)

    server = started(["--fallback", "dir", "--model-dir", str(tmp_path / "nothing")], empty.env, tmp_path, "none")
    try:
        status, health = request(server.base + "/health")
        assert status == 503 and health["status"] == "unavailable"
        assert "heart-disease@champion" in health["reason"] and "nothing" in health["reason"]
        assert request(server.base + "/predict", PATIENT)[0] == 503
    finally:
        server.stop()


def test_an_unknown_fallback_is_refused_at_start(trained):
    result = subprocess.run([sys.executable, "-m", "serving", "--fallback", "latest"], env=trained.env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown ['latest']" in result.stderr


def test_an_unreachable_tracking_server_starts_degraded_at_once(trained, tmp_path):
    env = {**trained.env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    server = started(["--retry-seconds", "1"], env, tmp_path, "unreachable")
    try:
        status, health = request(server.base + "/health")
        assert status == 503 and "unreachable" in health["reason"]
    finally:
        server.stop()
    assert "cannot reach the tracking server" in server.log.read_text()


def test_metrics_count_requests_and_predictions(api):
    request(api.base + "/predict", [PATIENT, PATIENT])
    status, text = request(api.base + "/metrics")
    assert status == 200
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert any(k.startswith('heart_requests_total{endpoint="/predict",model_version=') and 'status="200"' in k
               for k in samples)
    assert sum(v for k, v in samples.items() if k.startswith("heart_predictions_total{")) >= 2
    assert any(k.startswith("heart_request_seconds_bucket{") for k in samples)
    assert samples.get('heart_model_events_total{event="load"}', 0) >= 1


# --------------------------------------------------------------------------- identity and trust

def test_a_model_loaded_by_version_reports_that_version(trained, tmp_path):
    """The same logged model registered twice outside the pipeline: each URI answers as itself."""
    champion = trained.client.get_model_version_by_alias("heart-disease", "champion")
    mlflow.set_tracking_uri(trained.tracking_uri)
    mlflow.set_registry_uri(trained.tracking_uri)
    again = mlflow.register_model(champion.source, "heart-disease")
    assert again.version != champion.version
    for version in (champion.version, again.version):
        answer = mlflow.pyfunc.load_model(f"models:/heart-disease/{version}").predict([PATIENT])
        assert answer["model_version"].tolist() == [str(version)]
    trained.client.delete_model_version("heart-disease", again.version)


@pytest.mark.parametrize("tampering, message", [
    (lambda flavor: flavor.update(serialization_format="pickle"), "asks for serialization_format 'pickle'"),
    (lambda flavor: flavor["skops_trusted_types"].append("posix.system"), "asks to trust ['posix.system']"),
])
def test_the_loader_trusts_code_not_the_models_files(trained, tmp_path, tampering, message):
    import yaml

    mlflow.set_tracking_uri(trained.tracking_uri)
    copy = Path(mlflow.artifacts.download_artifacts("models:/heart-disease@champion", dst_path=str(tmp_path)))
    mlmodel = copy / "artifacts" / "pipeline" / "MLmodel"
    spec = yaml.safe_load(mlmodel.read_text())
    tampering(spec["flavors"]["sklearn"])
    mlmodel.write_text(yaml.safe_dump(spec))
    with pytest.raises(Exception, match=re.escape(message)):
        mlflow.pyfunc.load_model(str(copy))


def test_the_inference_log_keeps_what_was_answered(trained, tmp_path):
    import pandas as pd

    log_dir = tmp_path / "inferences"
    champion = trained.client.get_model_version_by_alias("heart-disease", "champion").version
    server = started(["--log-inputs", str(log_dir)], trained.env, tmp_path, "inference-log")
    try:
        assert request(server.base + "/predict", [PATIENT, {**PATIENT, "ca": None}])[0] == 200
        assert request(server.base + "/predict", {**PATIENT, "ca": True})[0] == 422  # refused: not logged
    finally:
        server.stop()  # a clean stop writes what is buffered
    logged = pd.concat([pd.read_parquet(f) for f in sorted(log_dir.glob("inferences-*.parquet"))])
    assert len(logged) == 2 and logged["age"].tolist() == [54.0, 54.0] and logged["ca"].isna().tolist() == [False, True]
    assert set(logged["model_version"]) == {str(champion)} and "PATIENT DATA" in (log_dir / "README.txt").read_text()


def test_a_signed_registry_webhook_reloads_every_worker(trained, tmp_path):
    import uuid

    from serving.webhooks import DELIVERY_ID_HEADER, SECRET_ENV, SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_PATH, sign

    secret = "webhook-test-secret"
    server = Server([sys.executable, "-m", "serving", "--workers", "2", "--poll-seconds", "0"],
                    {**trained.env, SECRET_ENV: secret}, "/health", tmp_path, "webhooks")
    try:
        current = trained.client.get_model_version_by_alias("heart-disease", "champion")
        target = new_version_of_the_champion(trained)
        trained.client.set_registered_model_alias("heart-disease", "champion", target)
        body = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "2026-01-01T00:00:00Z",
                           "data": {"name": "heart-disease", "alias": "champion", "version": target}}).encode()

        def post(signature_secret):
            delivery, stamp = str(uuid.uuid4()), str(int(time.time()))
            req = urllib.request.Request(server.base + WEBHOOK_PATH, data=body, method="POST", headers={
                "Content-Type": "application/json", DELIVERY_ID_HEADER: delivery, TIMESTAMP_HEADER: stamp,
                SIGNATURE_HEADER: sign(signature_secret, delivery, stamp, body)})
            try:
                with urllib.request.urlopen(req, timeout=30) as response:
                    return response.status
            except urllib.error.HTTPError as err:
                return err.code

        assert post("forged") == 401
        assert post(secret) == 200
        deadline, reloads = time.time() + 60, 0
        while time.time() < deadline and reloads < 2:
            time.sleep(0.25)
            text = request(server.base + "/metrics")[1]
            reloads = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith('heart_model_events_total{event="webhook"}'))
        assert reloads == 2  # both workers, not only the one that got the delivery
        assert {request(server.base + "/health")[1]["model_version"] for _ in range(6)} == {target}
    finally:
        server.stop()
        trained.client.set_registered_model_alias("heart-disease", "champion", current.version)
        trained.client.delete_model_version("heart-disease", target)


# --------------------------------------------------------------------------- the sealed model

PATIENTS = json.loads((REPO / "tests" / "data" / "legacy_model_answers.json").read_text())


def answers_in_a_clean_process(env, model_uri: str) -> list[dict]:
    """What the model answers for PATIENTS, loaded in a process of its own."""
    script = ("import json, sys, mlflow, pandas as pd\n"
              f"answer = mlflow.pyfunc.load_model({model_uri!r}).predict(pd.DataFrame(json.loads(sys.argv[1])))\n"
              "print(json.dumps(answer[['prediction', 'probability', 'confidence', 'risk_level']]"
              ".to_dict(orient='records')))")
    result = subprocess.run([sys.executable, "-c", script, json.dumps(PATIENTS["patients"])], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def served_answers(server, path: str) -> list[dict]:
    if path == "/predict":
        status, body = request(server.base + path, PATIENTS["patients"])
    else:
        status, body = request(server.base + path, {"dataframe_records": PATIENTS["patients"]})
        body = body["predictions"] if status == 200 else body
    assert status == 200, body
    return [{key: row[key] for key in ANSWER_KEYS} for row in body]


def assert_same_answers(got: list[dict], expected: list[dict]) -> None:
    assert [(row["prediction"], row["risk_level"]) for row in got] == \
        [(row["prediction"], row["risk_level"]) for row in expected]
    for key in ("probability", "confidence"):
        assert [row[key] for row in got] == pytest.approx([row[key] for row in expected], abs=1e-12)


def broken_project_copy(root: Path) -> Path:
    """The project's code and config in another folder, with every module of the project's
    copy of the model package made to fail on import."""
    from tests.conftest import CODE_PACKAGES

    project = root / "project"
    for folder in (*CODE_PACKAGES, "conf", "profiles"):
        shutil.copytree(REPO / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for module in (project / "heart_disease_model").glob("*.py"):
        module.write_text(module.read_text() + "\nraise RuntimeError('the project copy of the model code ran')\n")
    return project


def test_the_model_answers_with_its_own_code_when_the_projects_copy_breaks(trained, tmp_path):
    """The app, `mlflow models serve` and score, started from a project whose copy of the
    model package raises on import (and is first on PYTHONPATH), answer as before."""
    import pandas as pd

    trained.client.set_registered_model_alias("heart-disease", "sealed", "1")
    expected = answers_in_a_clean_process(trained.env, "models:/heart-disease/1")
    project = broken_project_copy(tmp_path)
    env = {**trained.env, "PYTHONPATH": str(project)}
    app = Server([sys.executable, "-m", "serving", "--poll-seconds", "0", "--alias", "sealed"], env, "/health",
                 tmp_path, "broken-app", cwd=project)
    scoring = Server([str(BIN / "mlflow"), "models", "serve", "-m", "models:/heart-disease/1", "--env-manager",
                      "local", "--host", "127.0.0.1"], env, "/ping", tmp_path, "broken-serve", cwd=project)
    try:
        assert_same_answers(served_answers(app, "/predict"), expected)
        assert_same_answers(served_answers(scoring, "/invocations"), expected)
    finally:
        app.stop()
        scoring.stop()
    patients = tmp_path / "patients.csv"
    pd.DataFrame(PATIENTS["patients"]).to_csv(patients, index=False)
    scored = tmp_path / "scored.parquet"
    result = subprocess.run([sys.executable, "-m", "tools.score", f"score.input={patients}",
                             f"score.output={scored}", "score.model_uri=models:/heart-disease/1"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    answers = pd.read_parquet(scored)[list(ANSWER_KEYS)].to_dict(orient="records")
    assert_same_answers(answers, expected)


def test_a_process_that_imported_the_projects_package_loads_the_models_own(trained):
    script = ("import sys, mlflow, heart_disease_model.codebook as mine\n"
              "model = mlflow.pyfunc.load_model('models:/heart-disease/1').unwrap_python_model()\n"
              "print(mine.__file__)\n"
              "print(sys.modules['heart_disease_model.codebook'].__file__)\n"
              "print(sys.modules[type(model.codebook).__module__].__file__)")
    result = subprocess.run([sys.executable, "-c", script], env=trained.env, cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=True)
    projects, now_loaded, models = result.stdout.split()[-3:]
    assert Path(projects).is_relative_to(REPO)
    assert not Path(now_loaded).is_relative_to(REPO) and now_loaded == models
    assert Path(models).parts[-3:] == ("code", "heart_disease_model", "codebook.py")


def test_a_champion_logged_before_the_sealed_package_still_answers_alike(trained, tmp_path):
    """A version whose code is the old, whole `steps/` folder (tests/data/legacy_model), served
    by today's app and by `mlflow models serve`, answers what it answered the day it was logged."""
    legacy = tmp_path / "legacy_model"
    shutil.copytree(REPO / "tests" / "data" / "legacy_model", legacy)
    client = trained.client
    client.create_registered_model("heart-disease-legacy")
    version = client.create_model_version("heart-disease-legacy", str(legacy),
                                          tags={"validation.status": "VALIDATED"})
    client.set_registered_model_alias("heart-disease-legacy", "champion", version.version)
    app = Server([sys.executable, "-m", "serving", "--poll-seconds", "0", "--model-name", "heart-disease-legacy"],
                 trained.env, "/health", tmp_path, "legacy-app")
    scoring = Server([str(BIN / "mlflow"), "models", "serve", "-m", "models:/heart-disease-legacy@champion",
                      "--env-manager", "local", "--host", "127.0.0.1"], trained.env, "/ping", tmp_path,
                     "legacy-serve")
    try:
        # Registered before seals existed, it has none: refused until someone with the key seals it.
        status, health = request(app.base + "/health")
        assert status == 503 and f"heart-disease-legacy version {version.version} refused: it has no seal" \
            in health["reason"]
        subprocess.run([sys.executable, "-m", "tools.seal", "sign", "heart-disease-legacy", str(version.version)],
                       env=trained.env, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
        assert request(app.base + "/reload", method="POST", raw=b"")[0] == 200
        assert request(app.base + "/health")[1]["status"] == "ok"
        assert_same_answers(served_answers(app, "/predict"), PATIENTS["answers"])
        assert_same_answers(served_answers(scoring, "/invocations"), PATIENTS["answers"])
        # Asked to explain, it answers alike and says why there is no explanation.
        status, explained = request(app.base + "/predict?explain=true", PATIENTS["patients"])
        assert status == 200
        assert_same_answers([{key: row[key] for key in ANSWER_KEYS} for row in explained], PATIENTS["answers"])
        assert all(row["explanation"] is None and "logged before answers could be explained"
                   in row["explanation_unavailable"] for row in explained)
    finally:
        app.stop()
        scoring.stop()
