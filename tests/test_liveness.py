"""Who owns a RUNNING run or a partial file, and whether it is still alive: checked
against real processes (a child that reports its own owner tags, then is killed)."""

import json
import subprocess
import sys

from engine import names
from engine.liveness import HOST, PID_NAMESPACE, gone, owner_alive
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
