"""Seeded fake patients in UCI codes, for tests, offline demos and scale benchmarks.

Values follow the codebook (codes in their domains, numbers in Cleveland-like ranges),
a few `ca`/`thal` cells are missing as in the real file, and disease depends on the
features through a logistic model, so a classifier has something to learn.
Vectorised: millions of rows take seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def generate(rows: int, seed: int) -> pd.DataFrame:
    """`rows` patients with the 13 codebook features and `num` (0..4)."""
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(54, 9, rows), 29, 77).round()
    sex = (rng.random(rows) < 0.68).astype(float)
    cp = rng.choice([1, 2, 3, 4], rows, p=[0.08, 0.16, 0.28, 0.48]).astype(float)
    trestbps = np.clip(rng.normal(131, 17, rows), 94, 200).round()
    chol = np.clip(rng.normal(247, 50, rows), 126, 564).round()
    fbs = (rng.random(rows) < 0.15).astype(float)
    restecg = rng.choice([0, 1, 2], rows, p=[0.50, 0.02, 0.48]).astype(float)
    thalach = np.clip(rng.normal(150, 22, rows) - 0.5 * (age - 54), 71, 202).round()
    exang = (rng.random(rows) < 0.33).astype(float)
    oldpeak = np.clip(rng.gamma(1.0, 1.0, rows), 0, 6.2).round(1)
    slope = rng.choice([1, 2, 3], rows, p=[0.47, 0.46, 0.07]).astype(float)
    ca = rng.choice([0, 1, 2, 3], rows, p=[0.59, 0.22, 0.12, 0.07]).astype(float)
    thal = rng.choice([3, 6, 7], rows, p=[0.55, 0.06, 0.39]).astype(float)

    logit = (
        -6.0
        + 0.04 * age
        + 1.0 * sex
        + 1.2 * (cp == 4)
        + 0.01 * (trestbps - 130)
        + 0.9 * exang
        + 0.6 * oldpeak
        + 0.5 * (slope == 2)
        + 0.9 * ca
        + 1.4 * (thal == 7)
        + 0.8 * (thal == 6)
        - 0.02 * (thalach - 150)
        + rng.normal(0, 0.5, rows)
    )
    diseased = rng.random(rows) < 1 / (1 + np.exp(-logit))
    severity = rng.choice([1, 2, 3, 4], rows, p=[0.40, 0.26, 0.25, 0.09])
    num = np.where(diseased, severity, 0).astype(float)

    frame = pd.DataFrame({
        "age": age, "sex": sex, "cp": cp, "trestbps": trestbps, "chol": chol,
        "fbs": fbs, "restecg": restecg, "thalach": thalach, "exang": exang,
        "oldpeak": oldpeak, "slope": slope, "ca": ca, "thal": thal, "num": num,
    })
    frame.loc[rng.random(rows) < 0.013, "ca"] = np.nan
    frame.loc[rng.random(rows) < 0.007, "thal"] = np.nan
    return frame
