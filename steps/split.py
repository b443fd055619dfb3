"""split: drop exact duplicate rows, then a stratified train / val / test split.

Duplicates go first because a row that sits in both train and test makes the test
score a memory test. Logs data/{train,val,test}.parquet and each set's class counts.
"""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from engine.context import StepContext
from engine.errors import PipelineError


def split_data(raw: pd.DataFrame, label: str, test_fraction: float, val_fraction: float,
               seed: int) -> tuple[dict[str, pd.DataFrame], int]:
    """Return ({"train", "val", "test"} frames, number of duplicate rows dropped).
    The fractions are checked at start-up (engine/config_checks.py)."""
    unique = raw.drop_duplicates().reset_index(drop=True)
    dropped = len(raw) - len(unique)
    try:
        rest, test = train_test_split(unique, test_size=test_fraction, stratify=unique[label],
                                      random_state=seed)
        train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction),
                                      stratify=rest[label], random_state=seed)
    except ValueError as err:  # too few rows of a class to stratify
        raise PipelineError(f"cannot split {len(unique)} unique rows by '{label}': {err}") from None
    sets = {"train": train, "val": val, "test": test}
    return {name: frame.reset_index(drop=True) for name, frame in sets.items()}, dropped


def run(ctx: StepContext) -> None:
    cfg = ctx.cfg
    label = cfg.schema.label
    sets, dropped = split_data(ctx.read("raw"), label, cfg.split.test_fraction,
                               cfg.split.val_fraction, cfg.split.seed)
    ctx.done_with("raw")  # under `main`, freed now if eda is done with it too
    for name, frame in sets.items():
        ctx.write(name, frame)
    counts = {name: frame[label].value_counts().sort_index().to_dict() for name, frame in sets.items()}
    ctx.write("split_report", {"duplicates_dropped": dropped, "class_counts": counts})
    metrics = {"duplicates_dropped": dropped}
    for name, frame in sets.items():
        metrics[f"{name}_rows"] = len(frame)
        metrics[f"{name}_positive"] = int(frame[label].sum())
    ctx.log_metrics(metrics)
    ctx.summary.update(dropped_duplicates=dropped, **{name: len(frame) for name, frame in sets.items()})
    if dropped:
        print(f"split: dropped {dropped} exact duplicate row(s) before splitting")


if __name__ == "__main__":
    from engine.cli import launch_step

    launch_step("split")
