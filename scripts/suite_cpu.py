"""Where the test suite's CPU goes: every Python process the tests start, by command and by
test module. Not a test: it runs pytest and prints two tables.

On 2 cores the suite is CPU-bound (both cores busy nearly all along), so its wall time
follows the CPU its processes spend, and most of that is processes the tests start: the
project's commands, servers, sweep workers. Each process records its command, its CPU
seconds and the test that started it when it exits (a `sitecustomize` module put on
PYTHONPATH for the run). A process that never exits normally (SIGKILLed by a fault test,
a server stopped by signal) records nothing: the gap between "recorded" and the whole
run's CPU is theirs. So, on Linux, a third table counts every process started during the
run, Python or not, killed or not, from /proc every half second (a process shorter than
that may be missed; on a shared machine, others' processes count too).

    python scripts/suite_cpu.py                          # the whole suite
    python scripts/suite_cpu.py tests/test_sweep.py -n 0 # any pytest arguments
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOG_ENV = "SUITE_CPU_LOG"
RECORDER = textwrap.dedent(f"""\
    import atexit, json, os, sys

    def _record():
        times = os.times()
        line = json.dumps({{"argv": sys.argv[:3], "cpu": times.user + times.system,
                           "test": os.environ.get("PYTEST_CURRENT_TEST", "")}})
        with open(os.environ["{LOG_ENV}"], "a") as log:
            log.write(line + "\\n")

    if os.environ.get("{LOG_ENV}"):
        atexit.register(_record)
    """)


def command_of(argv: list[str]) -> str:
    """`python -m steps.main`, `mlflow models`, `python -c`: what a process was, without its arguments."""
    if not argv or argv[0] == "-c":
        return "python -c"
    script = Path(argv[0])
    if script.name == "__main__.py":
        return f"python -m {script.parent.name}"
    if script.suffix == ".py" and script.parent.parent == REPO:  # the project's: run as a module or as a file
        if (script.parent / "__init__.py").exists():
            return f"python -m {script.parent.name}.{script.stem}"
        return f"python {script.parent.name}/{script.name}"
    return " ".join([script.name, *[arg for arg in argv[1:2] if not arg.startswith("-")]])


PYTHON_FLAGS_WITH_VALUE = ("-X", "-W")


def command_of_cmdline(cmdline: list[str]) -> str:
    """What a process was, from its /proc command line: named as command_of names it for a
    Python process (`python -m steps.main`), else its program (`java`, `postgres`)."""
    program = Path(cmdline[0]).name
    if not program.startswith("python"):
        return program.split(":")[0]  # postgres names its processes `postgres: <role> ...`
    rest = iter(cmdline[1:])
    for arg in rest:
        if arg == "-m":
            return f"python -m {next(rest, '')}"
        if arg == "-c":
            return "python -c"
        if arg in PYTHON_FLAGS_WITH_VALUE:
            next(rest, None)
        elif not arg.startswith("-"):
            return command_of([arg, *rest])
    return "python"


class ProcSampler(threading.Thread):
    """Every half second, the CPU seconds of each process started since this sampler was made."""

    SECONDS = 0.5

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.ticks_per_second = os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        self.since = int(uptime * self.ticks_per_second)
        self.seen: dict[int, list] = {}  # pid: [command, CPU seconds]
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.SECONDS):
            self.scan()

    def scan(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[19]) < self.since:  # started before the run
                    continue
                cpu = (int(fields[11]) + int(fields[12])) / self.ticks_per_second
                pid = int(entry.name)
                if pid not in self.seen:
                    cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                    self.seen[pid] = [command_of_cmdline([a.decode(errors="replace") for a in cmdline if a]), 0.0]
                self.seen[pid][1] = max(self.seen[pid][1], cpu)
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile, or a kernel thread without a command line

    def totals(self) -> dict[str, list[float]]:
        by_command: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        for command, cpu in self.seen.values():
            by_command[command][0] += 1
            by_command[command][1] += cpu
        return by_command


def table(title: str, totals: dict[str, list[float]], rows: int) -> str:
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:rows]
    lines = [f"| {title} | processes | CPU s |", "|---|---:|---:|"]
    lines += [f"| {name or '(no test: pytest itself, session setup)'} | {count:.0f} | {cpu:.0f} |"
              for name, (count, cpu) in ranked]
    return "\n".join(lines)


def main(pytest_args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="suite-cpu-") as folder:
        (Path(folder) / "sitecustomize.py").write_text(RECORDER)
        log = Path(folder) / "processes.jsonl"
        env = {**os.environ, LOG_ENV: str(log),
               "PYTHONPATH": os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))}
        sampler = ProcSampler() if Path("/proc/uptime").exists() else None
        if sampler:
            sampler.start()
        started, before = time.perf_counter(), os.times()
        code = subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=REPO, env=env)
        wall, after = time.perf_counter() - started, os.times()
        if sampler:
            sampler.stopped.set()
            sampler.join()
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    whole = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    by_command: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    by_module: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for record in records:
        for totals, name in ((by_command, command_of(record["argv"])), (by_module, record["test"].split("::")[0])):
            totals[name][0] += 1
            totals[name][1] += record["cpu"]
    recorded = sum(record["cpu"] for record in records)
    print(f"\npytest exited {code} after {wall:.0f} s wall; its processes used {whole:.0f} CPU s, "
          f"{recorded:.0f} of them recorded by {len(records)} processes that exited normally\n")
    print(table("command", by_command, 25), end="\n\n")
    print(table("test module", by_module, 30))
    if sampler:
        seen = sampler.totals()
        print(f"\nEvery process started during the run, sampled from /proc: {sum(n for n, _ in seen.values()):.0f} "
              f"processes, {sum(cpu for _, cpu in seen.values()):.0f} CPU s\n")
        print(table("command (sampled)", seen, 25))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
