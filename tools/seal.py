"""Model seals by hand (engine/seal.py does the work; register seals every version it makes):

    python -m tools.seal verify models:/heart-disease@champion --into serving/model
    mlflow models serve -m serving/model --env-manager local     # serves exactly the checked copy

    python -m tools.seal sign heart-disease 3                    # seal a version made outside register

`verify` copies the model, checks that it is the project's kind and that its seal verifies
with the profile's public key (`--public-key` to name another), and with `--into` leaves
that checked copy in a new folder to serve; `mlflow models serve` on a models:/ URI checks
nothing. `sign` seals a version someone reviewed, e.g. a champion registered before seals
existed, with register.seal_key's key (`--key`; default: the pair beside the store).
Exit status 0 when verified or sealed, 1 when refused, 2 for a usage or store problem.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException

from engine import seal
from engine.cli import quiet_third_parties
from engine.errors import PipelineError
from engine.logged_model import verified_copy
from engine.store import connect, load_profile


def verify(uri: str, public_key: Path, into: Path | None) -> str:
    """Check the model at `uri`; with `into`, move the checked copy there. Returns what to print."""
    if into is not None and into.exists():
        raise PipelineError(f"--into {into}: already exists; name a new folder, so that only checked files are in it")
    copy = verified_copy(uri, public_key)
    what = seal.describe(copy, uri)
    if into is None:
        return f"{what}: sealed, every file verified with {public_key}"
    shutil.move(str(copy), str(into))
    return f"{what}: sealed, every file verified with {public_key}; the checked copy is {into}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.seal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="local", help="profiles/<name>.yaml or a path")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="check a model's seal (and keep the checked copy)")
    check.add_argument("uri", help="models:/<name>@<alias>, models:/<name>/<version>, models:/m-..., or a folder")
    check.add_argument("--into", type=Path, help="a new folder for the checked copy, e.g. to serve it")
    check.add_argument("--public-key", help="PEM file; default: the profile's seal_public_key")
    sign = commands.add_parser("sign", help="seal a registered version (needs the private key)")
    sign.add_argument("name")
    sign.add_argument("version")
    sign.add_argument("--key", help="PEM file; default: register.seal_key's default, keys/seal.key beside the store")
    args = parser.parse_args()

    quiet_third_parties()
    try:
        profile = load_profile(args.profile)
        tracking = connect(profile)
        if args.command == "verify":
            public_key = Path(args.public_key) if args.public_key else seal.public_key_path(profile,
                                                                                          tracking.tracking_uri)
            print(verify(args.uri, public_key, args.into))
        else:
            private_key = seal.private_key_path(args.key, tracking.tracking_uri)
            seal.ensure_key_pair(private_key, create=not args.key)
            with tempfile.TemporaryDirectory(prefix="heart-seal-") as workdir:
                sealed = seal.seal_version(tracking.client, args.name, args.version, private_key, Path(workdir))
            print(f"{args.name} version {sealed.version}: sealed with {private_key}; "
                  f"the seal is {sealed.signature_uri}")
    except seal.SealRefused as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:  # no such model, version or alias: MLflow says which
        print(f"error: {err.message.splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
