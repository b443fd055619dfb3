"""A team on one store survives a lost machine: real processes, one of them on a second
machine simulated by its own UTS and PID namespaces (`unshare`, hostname machine-b), so
the liveness code there really believes another host and cannot see our pids, nor we
its. Claims of a machine that dies are taken over once its heartbeat has stood still
for the grace period; a slow machine whose heartbeat goes on is waited for; register's
lease makes two machines' champion decisions one after the other."""

import shutil
import subprocess
import sys
import time

import pytest
from mlflow.entities import ViewType

from engine import names
from tests.conftest import QUICK_EVALUATE, REPO
from tests.test_runner_faults import assert_healthy

pytestmark = pytest.mark.e2e

GRACE_SECONDS = 4
# Small, so a test waits seconds, not the default minute; the rule is the same.
FAST_LIVENESS = ("liveness.heartbeat_seconds=0.5", f"liveness.grace_seconds={GRACE_SECONDS}")
# PID 1 of a PID namespace ignores signals it has no handler for, SIGKILL from inside
# included: the shell stays PID 1, so the fault points can kill the command it starts.
MACHINE_B = ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "sh", "-c",
             'hostname machine-b && "$@"; exit $?', "sh"]


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*MACHINE_B, "hostname"], capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() == "machine-b"


requires_unshare = pytest.mark.skipif(not _unshare_works(),
                                      reason="needs unshare --uts --pid (root, or user namespaces)")


def on_machine_b(store, *overrides, fault=None, tmp=None):
    """`python -m steps.main <overrides>` as a process of machine-b, started (not waited for).
    Machine-b has a temp folder of its own, like another machine (a tracking server's
    store lock lives there; a SQLite store's beside its file, as on a shared disk)."""
    env = {**store.env, "TMPDIR": str(tmp)}
    if fault:
        env[names.FAULT_ENV] = fault
    return subprocess.Popen([*MACHINE_B, sys.executable, "-m", "steps.main", *overrides], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def here(store, *overrides):
    return store.start("steps.main", *overrides)


def step_runs(store, step, host=None):
    query = f"tags.`{names.STEP}` = '{step}'" + (f" and tags.`{names.HOST}` = '{host}'" if host else "")
    return store.client.search_runs([store.experiment_id], query, order_by=["attributes.start_time DESC"])


def wait_for(condition, timeout=300, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def versions(store) -> list[int]:
    return sorted(int(v.version) for v in store.client.search_model_versions("name = 'heart-disease'"))


def assert_champion_is_the_best(store):
    validated = [v for v in store.client.search_model_versions("name = 'heart-disease'")
                 if v.tags.get(names.VALIDATION_STATUS) == names.VALIDATED]
    best = max(float(v.tags["primary_metric_value"]) for v in validated)
    champion = store.client.get_model_version_by_alias("heart-disease", "champion")
    assert float(champion.tags["primary_metric_value"]) == best


def assert_healthy_but_for_machine_b_main(store):
    """assert_healthy, allowing the one run nobody can end: the `main` of the lost machine
    (runs that group steps are not claims; no one waits for them)."""
    running = store.client.search_runs([store.experiment_id], "attributes.status = 'RUNNING'")
    owners = [(r.data.tags.get(names.ROLE), r.data.tags.get(names.HOST)) for r in running]
    assert owners in ([], [("main", "machine-b")]), owners
    for run in running:
        store.client.set_terminated(run.info.run_id, "KILLED")
    assert_healthy(store)


@pytest.fixture(scope="module")
def store(trained):
    return trained


@requires_unshare
@pytest.mark.parametrize("point, holds", [
    ("evaluate.started", "the evaluate claim"),
    ("register.version_created", "the register claim, then register's lease"),
])
def test_a_machine_killed_mid_step_holds_it_for_the_grace_period_only(store, tmp_path, point, holds):
    overrides = (QUICK_EVALUATE, f"model.C={0.0555 if point.startswith('evaluate') else 0.0444}", *FAST_LIVENESS)
    before = versions(store)
    killed = on_machine_b(store, *overrides, fault=point, tmp=tmp_path)
    out, err = killed.communicate(timeout=600)
    assert killed.returncode == 128 + 9, err[-3000:]
    step = point.split(".")[0]
    dead = step_runs(store, step, "machine-b")[0]
    assert dead.info.status == "RUNNING" and dead.data.tags[names.HOST] == "machine-b"

    started = time.monotonic()
    again = here(store, *overrides)
    out, err = again.communicate(timeout=600)
    elapsed = time.monotonic() - started
    assert again.returncode == 0, err[-3000:]
    print(f"{point}: main on this machine finished in {elapsed:.1f}s after machine-b died holding {holds}")

    assert f"waiting for run {dead.info.run_id} (process" in err and "on machine-b)" in err
    assert f"marked run {dead.info.run_id} KILLED: process" in err
    dead = store.client.get_run(dead.info.run_id)
    assert dead.info.status == "KILLED" and "stopped its heartbeat" in dead.data.tags[names.ERROR]
    assert "machine-b" in dead.data.tags[names.ERROR]
    # The lost machine held the step for the grace period (and a poll or two), no longer:
    # the step's time in main, less its own work, is the wait for the dead claim.
    taken_over = store.client.get_run(store.client.get_run(latest_main_id(store)).data.tags[f"pipeline.{step}.run_id"])
    work = float(taken_over.data.tags[names.SECONDS])
    waited = step_seconds_in_main(out, step) - work
    assert GRACE_SECONDS <= waited <= GRACE_SECONDS + 8, waited
    if step == "register":
        # A dead register held register's lease too: waited for within the step's work,
        # then marked and deleted (its heartbeat stopped), and the next generation taken.
        assert "taking over the lease from heart-disease.register.lease." in err and work >= GRACE_SECONDS
        leases = store.client.search_experiments(view_type=ViewType.ALL, order_by=["name DESC"], max_results=2,
                                                 filter_string="name LIKE 'heart-disease.register.lease.%'")
        assert "stopped its heartbeat" in leases[1].tags[names.ERROR] and leases[1].lifecycle_stage == "deleted"
        assert leases[0].tags[names.LEASE] == "released"
        assert versions(store) == before + [max(before) + 1]  # the version machine-b created, completed
        assert "completing the version an interrupted register created" in out
    assert_champion_is_the_best(store)
    assert_healthy_but_for_machine_b_main(store)


def latest_main_id(store) -> str:
    return store.client.search_runs([store.experiment_id], f"tags.`{names.ROLE}` = 'main'",
                                    order_by=["attributes.start_time DESC"], max_results=1)[0].info.run_id


def step_seconds_in_main(stdout: str, step: str) -> float:
    """A step's seconds as main's progress line reports them: waiting for a claim included."""
    line = next(line for line in stdout.splitlines() if line.startswith(f"{step}: ran run "))
    return float(line.split(" in ", 1)[1].split("s", 1)[0])


@requires_unshare
def test_a_slow_machine_whose_heartbeat_goes_on_is_never_taken_over(store, tmp_path):
    # Evaluate with repeats enough to outlast both the grace period and the waiter's own start
    # (about 4 s): slow, alive, beating. With 6 repeats, a quiet machine finished before the
    # waiter arrived (seen once in a fresh clone's `./run.sh test`).
    overrides = ("evaluate.cv_repeats=20", "model.C=0.0666", *FAST_LIVENESS)
    slow = on_machine_b(store, *overrides, tmp=tmp_path)
    try:
        claim = wait_for(lambda: [r for r in step_runs(store, "evaluate", "machine-b") if r.info.status == "RUNNING"],
                         what="machine-b's evaluate claim")[0]
        waiter = here(store, *overrides)
        out, err = waiter.communicate(timeout=600)
        slow_out, slow_err = slow.communicate(timeout=600)
    finally:
        slow.kill()
    assert slow.returncode == 0 and waiter.returncode == 0, (slow_err[-2000:], err[-2000:])
    assert f"waiting for run {claim.info.run_id}" in err and "KILLED" not in err
    finished = store.client.get_run(claim.info.run_id)
    assert finished.info.status == "FINISHED" and names.ERROR not in finished.data.tags
    assert float(finished.data.tags[names.SECONDS]) > GRACE_SECONDS  # it really was slower than the grace
    assert f"evaluate: reused run {claim.info.run_id}" in out


@requires_unshare
def test_two_machines_running_one_new_config_at_once_add_one_version(store, tmp_path):
    before = versions(store)
    overrides = (QUICK_EVALUATE, "model.C=0.0333", *FAST_LIVENESS)
    both = [on_machine_b(store, *overrides, tmp=tmp_path), here(store, *overrides)]
    outputs = [process.communicate(timeout=600) for process in both]
    assert [process.returncode for process in both] == [0, 0], [err[-2000:] for _, err in outputs]
    assert versions(store) == before + [max(before) + 1]
    assert_champion_is_the_best(store)
    assert_healthy(store)


@requires_unshare
def test_two_machines_registering_different_models_at_once_crown_the_better(store, tmp_path):
    before = versions(store)
    both = [on_machine_b(store, QUICK_EVALUATE, "model.C=0.02", *FAST_LIVENESS, tmp=tmp_path),
            here(store, QUICK_EVALUATE, "model.C=3.0", *FAST_LIVENESS)]
    outputs = [process.communicate(timeout=600) for process in both]
    assert [process.returncode for process in both] == [0, 0], [err[-2000:] for _, err in outputs]
    assert versions(store) == before + [max(before) + 1, max(before) + 2]
    assert_champion_is_the_best(store)
