"""Who owns a RUNNING run or a partial file, and whether it is still alive: checked
against real processes (a child that reports its own owner tags, then is killed), and
for other machines' owners, against their heartbeats as a waiter's clock sees them."""

import json
import signal
import subprocess
import sys

from engine import names
from engine.heartbeat import Watch, silence
from engine.lease import generation_of
from engine.liveness import HOST, PID_NAMESPACE, gone, lost, on_this_machine, owner_alive
from tests.conftest import REPO

REPORT_OWNER = ("import json, sys; from engine.liveness import owner_tags; "
                "print(json.dumps(owner_tags()), flush=True); sys.stdin.read()")


def test_an_owner_is_alive_until_killed_and_a_recycled_pid_is_not_it():
    child = subprocess.Popen([sys.executable, "-c", REPORT_OWNER], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        tags = json.loads(child.stdout.readline())
        pid = int(tags[names.PID])
        assert tags[names.HOST] == HOST and tags[names.PID_NAMESPACE] == PID_NAMESPACE != ""
        assert owner_alive(tags) and not gone(HOST, PID_NAMESPACE, pid)
        # the same pid with another start time is another process: the owner is gone
        assert not owner_alive({**tags, names.PID_STARTED: str(int(tags[names.PID_STARTED]) - 1)})
    finally:
        child.kill()
        child.wait()
    assert not owner_alive(tags) and gone(HOST, PID_NAMESPACE, pid)


def test_an_owner_this_process_cannot_see_is_taken_for_alive():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = dead.stdout.strip()
    mine = {names.HOST: HOST, names.PID_NAMESPACE: PID_NAMESPACE, names.PID: pid, names.PID_STARTED: "1"}
    assert not owner_alive(mine)
    assert owner_alive({**mine, names.HOST: HOST + "-other"})  # another machine
    assert owner_alive({**mine, names.PID_NAMESPACE: "1"})  # another container of this machine
    assert not gone(HOST, "1", int(pid)) and not gone(HOST + "-other", PID_NAMESPACE, int(pid))


def test_a_heartbeat_is_still_once_its_value_stands_for_the_grace_period_of_the_waiters_clock():
    now = [100.0]
    watch = Watch(grace_seconds=5, clock=lambda: now[0])
    assert not watch.still("run", "08:00:00")  # first seen now: the waiter's clock starts
    now[0] = 104.9
    assert not watch.still("run", "08:00:00")
    now[0] = 105.0
    assert watch.still("run", "08:00:00")
    assert not watch.still("run", "08:00:05")  # it beat: the grace period starts again
    now[0] = 109.0
    assert not watch.still("run", "08:00:05") and not watch.still("other", "08:00:05")
    # however old the owner's own time says it is: two machines' clocks differ
    assert silence(None, "1999-01-01", 0.0) == (("1999-01-01", 0.0), 0.0)


def test_an_owner_on_another_machine_is_lost_only_when_its_heartbeat_stops():
    now = [0.0]
    watch = Watch(grace_seconds=3, clock=lambda: now[0])
    other = {names.HOST: HOST + "-other", names.PID_NAMESPACE: "1", names.PID: "7", names.HEARTBEAT: "a"}
    assert not on_this_machine(other) and lost(other, watch, "r") is None
    now[0] = 10.0
    reason = lost(other, watch, "r")
    assert reason.startswith(f"process 7 on {HOST}-other stopped its heartbeat") and "liveness.grace_seconds" in reason
    assert lost({**other, names.HEARTBEAT: "b"}, watch, "r") is None  # it beat again


def test_a_paused_owner_of_this_machine_is_alive_however_still_its_heartbeat():
    child = subprocess.Popen([sys.executable, "-c", REPORT_OWNER], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        tags = json.loads(child.stdout.readline())
        child.send_signal(signal.SIGSTOP)
        now = [0.0]
        watch = Watch(grace_seconds=1, clock=lambda: now[0])
        lost(tags, watch, "r")
        now[0] = 60.0
        assert on_this_machine(tags) and lost(tags, watch, "r") is None
    finally:
        child.kill()
        child.wait()
    assert lost(tags, watch, "r").startswith(f"process {tags[names.PID]} on {HOST} ended without finishing")


def test_a_lease_generation_is_read_from_its_experiment_name_only():
    prefix = "heart-disease.register.lease."
    assert generation_of(prefix, prefix + "000000012") == 12
    assert generation_of(prefix, "heart_disease.register.lease.000000012") is None  # LIKE's `_` matched it
    assert generation_of(prefix, prefix + "12") is None and generation_of(prefix, "heart-disease") is None
