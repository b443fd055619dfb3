"""The command line: `python -m steps.<step>` and `mlflow run . -e <step>` start here.

Hydra composes the config; the config is checked before anything touches the store;
then the command runs with SIGTERM and SIGINT turned into an orderly stop. Exit codes:
0 done, 1 a failure the message explains, 2 a config error (no run was created),
3 drift found by `monitor` with monitor.fail_on_drift=true, 128+N stopped by signal N
(the open runs are marked KILLED, saying which signal).

This module does not import MLflow: the functions that reach the store import what
they use, so a command that needs no store (a `main` with every step up to date,
engine/up_to_date.py) never loads it.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import warnings
from typing import Any, Callable, NoReturn, Optional

from omegaconf import DictConfig

from engine import names, startup
from engine.config import STEP_NAMES
from engine.config_checks import ConfigError, check_config
from engine.errors import Interrupted, explains_itself
from engine.redaction import redact
from engine.results import StepResult
from engine.store import PROJECT_ROOT, Tracking, connect

CONFIG_ERROR_EXIT = 2
# Where `mlflow run` passes the id of the run it made for the command to fill.
LAUNCHER_RUN_ID = "MLFLOW_RUN_ID"
# `${oc.env:...}`, `${oc.decode:...}` or any other resolver call inside an override.
_RESOLVER_CALL = re.compile(r"\$\{\s*[A-Za-z_][\w.]*\s*:")


def _argv_from_mlproject(argv: list[str]) -> list[str]:
    """MLproject calls `python -m steps.<step> --overrides '<string>' --profile <name>`:
    MLflow passes each parameter as one shell-quoted word. Split the overrides string
    the way a shell would, so `model=random_forest model.n_estimators=300` and
    quoted values like `data.path='/my data/x.csv'` arrive as Hydra overrides."""
    out, rest = [argv[0]], iter(argv[1:])
    for arg in rest:
        if arg == "--overrides":
            out.extend(word for word in shlex.split(next(rest, "")) if word)
        elif arg.startswith("--overrides="):
            out.extend(word for word in shlex.split(arg.split("=", 1)[1]) if word)
        elif arg == "--profile":
            out.append(f"profile={next(rest)}")
        else:
            out.append(arg)
    return out


def refuse_resolver_overrides(argv: list[str]) -> None:
    """An override that calls a resolver could copy the environment (a password, say) into
    the run's config, params and error messages: refused before Hydra resolves anything,
    naming the key only, never the value."""
    keys = [arg.split("=", 1)[0] for arg in argv[1:] if "=" in arg and _RESOLVER_CALL.search(arg.split("=", 1)[1])]
    for key in keys:
        print(f"config error: {key}: a command-line override may not call a resolver (${{oc.env:...}}, "
              "${oc.decode:...}, ...); write the value itself", file=sys.stderr)
    if keys:
        sys.exit(CONFIG_ERROR_EXIT)


def _raise_interrupted(signum: int, _frame: Any) -> None:
    name = signal.Signals(signum).name
    raise Interrupted(name, 128 + signum)


def launch(task: Callable[[DictConfig], Any], config_name: str = "config", multirun: bool = False) -> None:
    """Entry for `python -m steps.<step>`: run `task` as a Hydra app on conf/<config_name>.yaml,
    accepting MLproject's `--overrides/--profile` form as well as plain overrides."""
    startup.resume()
    import hydra

    from engine.config import register_configs

    register_configs()
    quiet_third_parties()
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    sys.argv = _argv_from_mlproject(sys.argv)
    refuse_resolver_overrides(sys.argv)
    # Hydra refuses --multirun beside its other modes (--cfg, --info, --help, ...).
    modes = {"--multirun", "-m", "--run", "-r", "--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help",
             "--shell-completion", "-sc"}
    if multirun and not modes & {arg.split("=")[0] for arg in sys.argv[1:]}:
        sys.argv.insert(1, "--multirun")
    compose_once(sys.argv)
    hydra.main(config_path=str(PROJECT_ROOT / "conf"), config_name=config_name, version_base="1.3")(task)()


def compose_once(argv: list[str]) -> None:
    """Hydra 1.3 composes the whole config twice per command: once only to read
    `hydra.mode` (Hydra.get_mode), then to run. No config of the project sets hydra.mode
    (tests/test_project_files.py), so unless the command line does, the mode is the one
    its --multirun flag says, which is what Hydra decides when get_mode finds none."""
    if any(arg.lstrip("+~").startswith("hydra.mode") for arg in argv[1:]):
        return
    from hydra._internal.hydra import Hydra

    Hydra.get_mode = lambda self, config_name, overrides: None


def quiet_third_parties() -> None:
    """What the project's commands print is theirs: no artifact progress bars between the
    step lines, no "View run at <url>" lines (they would show a password in the URI; main
    prints a redacted link), no deprecation notices from libraries about each other."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow 3.17's telemetry thread edits os.environ while HTTP requests read it (a race
    # seen failing runs against a tracking server); the project sends none.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="(mlflow|skops|sklearn)")


def run_link(tracking: Tracking, run_id: str) -> Optional[str]:
    """The run's page on a tracking server, without credentials; None for a local store."""
    uri = tracking.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return None
    page = f"#/experiments/{tracking.experiment_id}/runs/{run_id}?{names.UI_MODEL_TRAINING_VIEW}"
    return f"{redact(uri.rstrip('/'))}/{page}"


def run_command(cfg: DictConfig, body: Callable[[Tracking], Any], steps: tuple[str, ...] = STEP_NAMES,
                done_without_store: Optional[Callable[[], bool]] = None) -> Any:
    """Check the config (for the `steps` this command may run), connect, mark runs of dead
    processes KILLED, then run `body`. Every failure the user can act on ends in one
    message and its exit code. `body` may raise ConfigError too, before it creates a run:
    a command's checks of what the config points at (score's and monitor's files).
    `done_without_store`, asked once the config is checked, returns True when it has
    done the command without MLflow (`main` with every step up to date)."""
    try:
        check_config(cfg, steps)
    except ConfigError as err:
        refuse_config(err)
    try:
        if done_without_store is not None and done_without_store():
            return None
        from engine.liveness import reap_dead_runs

        tracking = connect(cfg.profile)
        for run_id in reap_dead_runs(tracking):
            print(f"marked run {run_id} KILLED: its process is gone", file=sys.stderr)
        return body(tracking)
    except ConfigError as err:
        refuse_config(err)
    except Exception as err:
        if not explains_itself(err):
            raise
        print(f"error: {redact(str(err))}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as err:
        stop_on_signal(err)


def refuse_config(err: ConfigError) -> NoReturn:
    for problem in err.problems:
        print(f"config error: {redact(problem)}", file=sys.stderr)
    sys.exit(CONFIG_ERROR_EXIT)


def stop_on_signal(err: Interrupted) -> None:
    """End every run this process opened as KILLED and exit 128+signal at once (a step
    running beside the chain is not waited for: its run is already ended)."""
    from engine.liveness import OPEN_RUNS
    from engine.runner import KILLED

    OPEN_RUNS.end_all(KILLED, str(err))
    print(f"{err}: open runs marked KILLED", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(err.exit_code)


def adopt_launcher_run(tracking: Tracking) -> str | None:
    """`mlflow run` creates a run and passes its id in MLFLOW_RUN_ID. Use that run when
    it lives in our experiment; otherwise leave it a pointer to the run we make."""
    from mlflow.exceptions import MlflowException

    run_id = os.environ.pop(LAUNCHER_RUN_ID, None)
    if not run_id:
        return None
    try:
        run = tracking.client.get_run(run_id)
    except MlflowException:
        return None  # launched against another store: nothing we can annotate
    if run.info.experiment_id == tracking.experiment_id:
        return run_id
    tracking.client.set_tag(
        run_id,
        "mlflow.note.content",
        "This run only launched the pipeline. Its runs are in experiment "
        f"id {tracking.experiment_id}; pass --experiment-name to `mlflow run` to keep them together.",
    )
    return None


def launch_step(name: str) -> None:
    launch(lambda cfg: run_single_step(name, cfg))


def run_single_step(name: str, cfg: DictConfig) -> StepResult:
    """`python -m steps.<name>` / `mlflow run . -e <name>`: one step, cached like in main."""
    from engine.context import ArtifactCache
    from engine.runner import execute

    def go(tracking: Tracking) -> StepResult:
        result = execute(name, cfg, tracking, ArtifactCache(tracking.client), own_run_id=adopt_launcher_run(tracking))
        inputs = ", ".join(f"{step}={run_id}" for step, run_id in result.inputs.items()) or "none"
        print(f"{name}: inputs from {inputs}")
        return result

    return run_command(cfg, go, (name,))
