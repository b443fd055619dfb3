"""Writes files in the headerless UCI format with what the Hungarian, Swiss and VA files
contain (only the Cleveland file ships with the tests): CRLF line ends, many `?` cells,
columns almost entirely missing, impossible zeros in chol and trestbps ("not measured"),
negative oldpeak, and few healthy patients."""

from pathlib import Path

import numpy as np

from domain.synthetic import generate

COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
           "slope", "ca", "thal", "num"]


def write_site_file(path: Path, rows: int, seed: int, *, crlf: bool = True,
                    mostly_missing: tuple[str, ...] = ("slope", "ca", "thal"), missing_share: float = 0.85,
                    zero_chol_share: float = 0.3, zero_trestbps_share: float = 0.03,
                    negative_oldpeak_share: float = 0.1, healthy_share: float = 0.1) -> Path:
    rng = np.random.default_rng(seed)
    frame = generate(rows, seed)
    healthy = rng.random(rows) < healthy_share
    frame["num"] = np.where(healthy, 0, np.maximum(frame["num"], rng.choice([1, 2, 3, 4], rows)))
    frame.loc[rng.random(rows) < zero_chol_share, "chol"] = 0
    frame.loc[rng.random(rows) < zero_trestbps_share, "trestbps"] = 0
    negative = rng.random(rows) < negative_oldpeak_share
    frame.loc[negative, "oldpeak"] = -np.round(rng.uniform(0.1, 2.6, negative.sum()), 1)
    for column in mostly_missing:
        frame.loc[rng.random(rows) < missing_share, column] = np.nan
    lines = [",".join("?" if np.isnan(v) else f"{v:.1f}" for v in row) for row in frame[COLUMNS].to_numpy()]
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode() + (b"\r\n" if crlf else b"\n"))
    return path
