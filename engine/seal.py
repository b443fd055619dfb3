"""Model seals: `register` signs every file of the model it registers, and the app, `score`
and `monitor` check that signature, and that the model is the project's own kind, on a
local copy before any of the model's code runs (engine.logged_model.load_pyfunc).

Why a signature and not the registry's tags: anyone who may edit a registered model can
set `validation.status` or point an alias at a pickle, and anyone who may write the
artifact store can change a file of a registered model. Neither holds the private key.

- The seal: `model.sig` (OpenSSF model-signing, an elliptic-curve key, no network) inside
  the model's own folder, beside `MLmodel`: every download and export of the model carries
  it, and it covers every other file there (added, missing or changed files all fail).
- The keys: `register.seal_key` (the private key; only where register runs) and
  `profile.seal_public_key` (what consumers verify with). null for both: `keys/` beside
  the SQLite store (beside the project for a tracking server), where the first register
  creates a pair. The private key is never logged nor an artifact; its file is 0600.

model_signing is imported only here, inside the functions that sign or verify: importing
it takes seconds, which no command should pay at start-up.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from engine.errors import PipelineError
from engine.store import PROJECT_ROOT, sqlite_path

SIGNATURE = "model.sig"
# MLflow writes this into a copy downloaded through models:/<name>/<version>, naming the
# version: it is not part of the model, so the seal leaves it out (and the signature itself).
DOWNLOAD_NOTE = "registered_model_meta"
UNSEALED_FILES = (SIGNATURE, DOWNLOAD_NOTE)
KEY_DIR = "keys"
PRIVATE_KEY, PUBLIC_KEY = "seal.key", "seal.pub"
# The project's kind of model (heart_disease_model/entry.py, engine/logged_model.py):
# MLflow "models from code", whose pyfunc is built by running a file, never unpickled.
CODE_MODEL_LOADER = "mlflow.pyfunc.loaders.code_model"
# The only format its fitted scikit-learn parts are saved in; the model's own loader then
# also refuses types outside its trusted list (heart_disease_model/serialization.py).
SKLEARN_FORMAT = "skops"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".cloudpickle", ".joblib")


class SealRefused(PipelineError):
    """The model was not loaded: no seal, a broken seal, or not the project's kind."""


# --------------------------------------------------------------------------- keys


def key_dir(tracking_uri: str) -> Path:
    """Where the embedded default keeps the key pair: keys/ beside a SQLite store's
    database, else (a tracking server) keys/ in the project folder, where register runs."""
    database = sqlite_path(tracking_uri)
    return database.resolve().parent / KEY_DIR if database is not None else PROJECT_ROOT / KEY_DIR


def _configured(path: Optional[str], tracking_uri: str, default_name: str) -> Path:
    if not path:
        return key_dir(tracking_uri) / default_name
    chosen = Path(os.path.expanduser(str(path)))
    return chosen if chosen.is_absolute() else PROJECT_ROOT / chosen  # like the profile's other paths


def private_key_path(seal_key: Optional[str], tracking_uri: str) -> Path:
    """register.seal_key, or the embedded default."""
    return _configured(seal_key, tracking_uri, PRIVATE_KEY)


def public_key_path(profile: Any, tracking_uri: str) -> Path:
    """profile.seal_public_key, or the embedded default. `profile` is the profile's config
    (a Hydra section, or profiles/<name>.yaml as the app reads it)."""
    return _configured(profile.get("seal_public_key"), tracking_uri, PUBLIC_KEY)


def ensure_key_pair(private_key: Path, create: bool) -> None:
    """Make the embedded default's pair (private key 0600, public key beside it) when there
    is none yet and `create` says this is the default place; a configured key must exist."""
    if private_key.is_file():
        return
    if not create:
        raise PipelineError(f"register.seal_key: no private key at {private_key}. Point register.seal_key at "
                            "the team's sealing key (PEM, elliptic curve), or set it to null to use a key pair "
                            "beside the store, created on first use")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written whole to a 0600 file of its own, then linked into place, which fails if a key
    # is there: of two registers starting at once, one key wins and the other uses it.
    fd, staged = tempfile.mkstemp(dir=private_key.parent, prefix=".seal-key-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        os.link(staged, private_key)
    except FileExistsError:
        return
    finally:
        os.unlink(staged)
    private_key.with_name(PUBLIC_KEY).write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


# --------------------------------------------------------------------------- the project's kind


def kind_problem(model_dir: Path) -> Optional[str]:
    """Why the folder is not the project's kind of model, read from its files without
    running any of them; None when it is: a models-from-code pyfunc with its code folder
    and code file, no pickle anywhere, its scikit-learn parts saved with skops."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return "it has no MLmodel file: not an MLflow model"
    pyfunc = (_flavors(mlmodel) or {}).get("python_function") or {}
    if pyfunc.get("loader_module") != CODE_MODEL_LOADER or "python_model" in pyfunc:
        return (f"it is not the project's kind of model: its pyfunc loads with {pyfunc.get('loader_module')!r}"
                + (f" from the pickle {pyfunc['python_model']!r}" if "python_model" in pyfunc else "")
                + f"; only models from code ({CODE_MODEL_LOADER}) are loaded, never a pickle")
    code_file = Path(str(pyfunc.get("model_code_path", ""))).name
    if not code_file or not (model_dir / code_file).is_file() or not (model_dir / str(pyfunc.get("code"))).is_dir():
        return "it is not the project's kind of model: its code file or code folder is missing"
    pickles = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return f"it holds pickles ({', '.join(pickles)}); the project's models never do"
    for inner in sorted(model_dir.rglob("MLmodel")):
        sklearn = (_flavors(inner) or {}).get("sklearn")
        if sklearn is not None and sklearn.get("serialization_format") != SKLEARN_FORMAT:
            return (f"{inner.parent.relative_to(model_dir)} is saved as {sklearn.get('serialization_format')!r}; "
                    f"the project's models use {SKLEARN_FORMAT!r} only")
    return None


def _flavors(mlmodel: Path) -> Optional[dict]:
    try:
        return (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors")
    except (yaml.YAMLError, OSError, AttributeError, UnicodeDecodeError):
        return None


# --------------------------------------------------------------------------- sign and verify


def _hashing():
    import model_signing

    return model_signing.hashing.Config().set_ignored_paths(paths=list(UNSEALED_FILES), ignore_git_paths=False)


def sign(model_dir: Path, private_key: Path) -> Path:
    """Write model_dir/model.sig over every other file of model_dir (after checking that it
    is the project's kind: nothing else gets a seal); return its path."""
    problem = kind_problem(model_dir)
    if problem:
        raise SealRefused(f"not sealing {model_dir}: {problem}")
    import model_signing

    signature = model_dir / SIGNATURE
    signature.unlink(missing_ok=True)
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(
        _hashing()).sign(model_dir, signature)
    return signature


def describe(model_dir: Path, uri: str) -> str:
    """The model as a person knows it: `heart-disease version 3` when it was downloaded
    through the registry (MLflow notes the version it resolved), else its URI."""
    try:
        note = yaml.safe_load((model_dir / DOWNLOAD_NOTE).read_text())
    except (OSError, yaml.YAMLError):
        return uri
    # Loaded by logged-model id (models:/m-...), MLflow writes the note with empty values.
    if isinstance(note, dict) and note.get("model_name") and note.get("model_version") is not None:
        return f"{note['model_name']} version {note['model_version']}"
    return uri


def verify(model_dir: Path, public_key: Path, what: str) -> None:
    """Raise SealRefused, naming `what` and the reason, unless model_dir is the project's
    kind of model and its seal verifies with public_key over exactly its files."""
    problem = kind_problem(model_dir)
    if problem:
        raise SealRefused(f"{what} refused: {problem}")
    signature = model_dir / SIGNATURE
    if not signature.is_file():
        raise SealRefused(f"{what} refused: it has no seal ({SIGNATURE}, written by register when it registers a "
                          "version): only sealed models are loaded. Seal a reviewed model with "
                          "`python -m tools.seal sign <name> <version>`")
    if not public_key.is_file():
        raise SealRefused(f"{what} not loaded: no public key at {public_key} to check its seal with; set "
                          "profile.seal_public_key to the public key of the team's sealing key")
    import model_signing

    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(model_dir, signature)
    except Exception as err:  # model_signing raises ValueError, JSON and protobuf errors alike
        raise SealRefused(f"{what} refused: its signature does not verify with {public_key}: "
                          f"{_why(err)}") from None


def _why(err: Exception) -> str:
    """model_signing's reason, without its digests: which files differ, or what is wrong."""
    text = str(err)
    # Its message is a list's repr, in which the quotes may come escaped.
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)", text)
    extra = re.search(r"Extra files found in model \\?'[^']*\\?': ([^\"'\]\\]+)", text)
    missing = re.search(r"Missing files in model \\?'[^']*\\?': ([^\"'\]\\]+)", text)
    parts = ([f"changed: {', '.join(changed)}"] if changed else []) + \
            ([f"added: {extra.group(1).strip()}"] if extra else []) + \
            ([f"missing: {missing.group(1).strip()}"] if missing else [])
    if parts:
        return "files " + "; ".join(parts)
    if "Key mismatch" in text:
        return "it was sealed with another key"
    return f"{type(err).__name__}: {text.splitlines()[0][:200] if text else 'unreadable signature'}"


@dataclass(frozen=True)
class Sealed:
    """What sealing a registered version did."""

    version: str
    signature_uri: str
    private_key: Path


def seal_version(client: Any, name: str, version: str, private_key: Path, workdir: Path) -> Sealed:
    """Download the version's files as stored, sign them, and store model.sig beside them
    (in the version's own folder of the artifact store). Safe to repeat."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    location = client.get_model_version_download_uri(name, version)
    local = workdir / f"seal-{name}-{version}"
    local.mkdir(parents=True, exist_ok=True)
    copy = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(local)))
    signature = sign(copy, private_key)
    get_artifact_repository(location).log_artifact(str(signature))
    return Sealed(str(version), f"{location.rstrip('/')}/{SIGNATURE}", private_key)
