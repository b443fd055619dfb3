"""Sealed models (engine/seal.py): register signs every file of each version it makes with
a real key pair beside the store; the app, `score` and `monitor` load a version only if it
is the project's kind of model and its seal verifies, before any of its code runs.

The attacks are real: a cloudpickle pyfunc tagged VALIDATED and made champion, whose
unpickling would write a marker file; a line appended to the champion's entry.py in the
artifact store, which would write one too; a version registered without a seal."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from engine import seal
from tests.conftest import REPO
from tests.test_serving import PATIENT, Server, request

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def app(trained, tmp_path_factory):
    """The app on the trained store, serving v1 (sealed by register); reloaded by hand."""
    server = Server([sys.executable, "-m", "serving", "--poll-seconds", "0"], trained.env, "/health",
                    tmp_path_factory.mktemp("logs"), "sealed-app")
    yield server
    server.stop()


def champion_folder(store) -> Path:
    """The champion's own folder in the artifact store (not a copy)."""
    mlflow.set_tracking_uri(store.tracking_uri)
    version = store.client.get_model_version_by_alias("heart-disease", "champion")
    return Path(store.client.get_model_version_download_uri("heart-disease", version.version))


def reload(app) -> dict:
    status, health = request(app.base + "/reload", method="POST", raw=b"")
    assert status in (200, 503), health
    return health


def patients_file(tmp_path: Path, rows: int = 60) -> Path:
    path = tmp_path / "patients.csv"
    pd.DataFrame([PATIENT] * rows).to_csv(path, index=False)
    return path


def score(store, tmp_path: Path, uri: str) -> subprocess.CompletedProcess:
    return store.tool("score", f"score.input={patients_file(tmp_path)}", f"score.output={tmp_path / 'scored.parquet'}",
                      f"score.model_uri={uri}", check=False)


def monitor(store, tmp_path: Path, uri: str) -> subprocess.CompletedProcess:
    return store.tool("monitor", f"monitor.input={patients_file(tmp_path)}", f"monitor.model_uri={uri}", check=False)


def register(store, source: str, alias: str = "champion") -> str:
    """A version of `source` tagged like a validated one, and given `alias`: what anyone who
    may edit the registry can do."""
    version = store.client.create_model_version("heart-disease", source,
                                                tags={"validation.status": "VALIDATED"}).version
    store.client.set_registered_model_alias("heart-disease", alias, str(version))
    return str(version)


# --------------------------------------------------------------------------- register seals


def test_register_seals_its_version_with_a_private_key_kept_beside_the_store(trained):
    keys = trained.root / "keys"
    assert stat.S_IMODE((keys / seal.PRIVATE_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert (champion_folder(trained) / seal.SIGNATURE).is_file()
    # The private key is in no artifact, no run record and no log of the store.
    secret = (keys / seal.PRIVATE_KEY).read_bytes()
    body = secret.split(b"-----")[2].strip().splitlines()[0]
    for path in trained.root.rglob("*"):
        if path.is_file() and keys not in path.parents:
            assert body not in path.read_bytes(), path
    result = subprocess.run([sys.executable, "-m", "tools.seal", "verify", "models:/heart-disease@champion"],
                            env=trained.env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "heart-disease version 1: sealed" in result.stdout, result.stderr


def test_a_changed_added_or_missing_file_breaks_the_seal(trained, tmp_path):
    """In-process, on a copy: the seal covers every file, and MLflow's download note aside, nothing else."""
    public = trained.root / "keys" / seal.PUBLIC_KEY
    copy = Path(shutil.copytree(champion_folder(trained), tmp_path / "copy"))
    seal.verify(copy, public, "copy")
    (copy / seal.DOWNLOAD_NOTE).write_text("model_name: heart-disease\nmodel_version: 9\n")
    seal.verify(copy, public, "copy")
    changes = {"changed: entry.py": lambda model: (model / "entry.py").open("a").write("\n"),
               "added: code/extra.py": lambda model: (model / "code" / "extra.py").write_text(""),
               "missing: input_example.json": lambda model: (model / "input_example.json").unlink()}
    for number, (reason, change) in enumerate(changes.items()):
        changed = Path(shutil.copytree(champion_folder(trained), tmp_path / str(number)))
        change(changed)
        with pytest.raises(seal.SealRefused, match=f"copy refused: its signature does not verify .*{reason}"):
            seal.verify(changed, public, "copy")


# --------------------------------------------------------------------------- what consumers refuse


def test_a_pickle_tagged_validated_and_made_champion_is_refused_without_running(app, trained, tmp_path):
    """(a) A plain cloudpickle pyfunc whose unpickling would write a marker file."""
    marker = tmp_path / "pickle-ran"
    runs = f"open({str(marker)!r}, 'w').write('ran')"
    script = ("import mlflow\n"
              "class Evil(mlflow.pyfunc.PythonModel):\n"
              "    def predict(self, context, model_input):\n"
              "        return model_input\n"
              "    def __reduce__(self):\n"
              f"        return (exec, ({runs!r},))\n"
              f"mlflow.set_tracking_uri({trained.tracking_uri!r})\n"
              "print(mlflow.pyfunc.log_model(name='evil', python_model=Evil()).model_uri)\n")
    logged = subprocess.run([sys.executable, "-c", script], env=trained.env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, check=True).stdout.split()[-1]
    marker.unlink()  # MLflow loads what it logs once, in the attacker's own process: the pickle works
    assert request(app.base + "/health")[1]["status"] == "ok"
    evil = register(trained, logged)
    try:
        health = reload(app)
        assert health["status"] != "ok" and health["model_version"] == "1"
        assert f"heart-disease version {evil} refused" in health["reason"] and "pickle" in health["reason"]
        assert request(app.base + "/predict", PATIENT)[1]["model_version"] == "1"
        result = score(trained, tmp_path, f"models:/heart-disease/{evil}")
        assert result.returncode != 0 and f"heart-disease version {evil} refused" in result.stdout + result.stderr
        assert not marker.exists()
    finally:
        trained.client.set_registered_model_alias("heart-disease", "champion", "1")
        trained.client.delete_model_version("heart-disease", evil)
    assert reload(app)["status"] == "ok"


def test_a_line_appended_to_the_champions_code_is_refused_by_app_score_and_monitor(app, trained, tmp_path):
    """(b) The champion's entry.py, in the artifact store, gains a line that would write a marker."""
    marker = tmp_path / "appended-line-ran"
    entry = champion_folder(trained) / "entry.py"
    original = entry.read_text()
    entry.write_text(original + f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    try:
        health = reload(app)
        assert health["status"] != "ok"
        assert "heart-disease version 1 refused: its signature does not verify" in health["reason"]
        assert "changed: entry.py" in health["reason"]
        for command in (score, monitor):
            result = command(trained, tmp_path, "models:/heart-disease/1")
            said = result.stdout + result.stderr
            assert result.returncode != 0 and "heart-disease version 1 refused: its signature does not verify" in said
            assert "Traceback" not in said
        assert not marker.exists()
    finally:
        entry.write_text(original)
    assert reload(app)["status"] == "ok"


def test_an_unsigned_version_is_refused_until_someone_with_the_key_seals_it(app, trained, tmp_path):
    """(c) The champion's files, registered again without their seal."""
    copy = Path(shutil.copytree(champion_folder(trained), tmp_path / "unsigned"))
    (copy / seal.SIGNATURE).unlink(missing_ok=True)
    unsigned = register(trained, str(copy))
    try:
        health = reload(app)
        assert health["status"] != "ok" and health["model_version"] == "1"
        assert f"heart-disease version {unsigned} refused: it has no seal" in health["reason"]
        result = score(trained, tmp_path, f"models:/heart-disease/{unsigned}")
        assert result.returncode != 0 and f"version {unsigned} refused: it has no seal" in result.stdout + result.stderr
        sealed = subprocess.run([sys.executable, "-m", "tools.seal", "sign", "heart-disease", unsigned],
                                env=trained.env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert sealed.returncode == 0, sealed.stderr
        assert reload(app)["model_version"] == unsigned
    finally:
        trained.client.set_registered_model_alias("heart-disease", "champion", "1")
        trained.client.delete_model_version("heart-disease", unsigned)
    assert reload(app)["status"] == "ok"


def test_another_public_key_refuses_every_version(trained, tmp_path):
    """The profile's public key is what decides: a key pair of someone else's refuses v1."""
    other = tmp_path / "other" / seal.PRIVATE_KEY
    seal.ensure_key_pair(other, create=True)
    profile = tmp_path / "profile.yaml"
    profile.write_text(json.dumps({"tracking_uri": trained.tracking_uri, "registry_uri": None,
                                   "artifact_location": None, "experiment_name": trained.experiment_name,
                                   "seal_public_key": str(other.with_name(seal.PUBLIC_KEY))}))
    result = subprocess.run([sys.executable, "-m", "tools.seal", "--profile", str(profile), "verify",
                             "models:/heart-disease/1"], env=trained.env, cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "sealed with another key" in result.stderr
