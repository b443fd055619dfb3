"""What running or reusing a step returns, and the table `main` prints of them.

Imports neither MLflow nor a step: `main` reports a pipeline that is up to date
(engine/up_to_date.py) before it loads either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.cards import text_table

# How `main` begins its report when no step had anything to do.
EVERY_STEP_UP_TO_DATE = "every step is up to date"


@dataclass
class StepResult:
    step: str
    run_id: str
    status: str  # ran | reused
    seconds: float
    summary: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # {upstream step: run id} it was built from

    def key_outputs(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.summary.items())

    def progress_line(self) -> str:
        return f"{self.step}: {self.status} run {self.run_id} in {self.seconds:.1f}s  {self.key_outputs()}"


def summary_table(results: list[StepResult]) -> str:
    return text_table([["step", "run id", "status", "seconds", "key outputs"]] + [
        [r.step, r.run_id, r.status, f"{r.seconds:.1f}", r.key_outputs()]
        for r in results])
