"""The fast scoring path: the fitted scikit-learn pipeline compiled into plain NumPy
arrays, so that scoring one patient costs microseconds instead of the milliseconds
scikit-learn spends per call validating input and dispatching through the
ColumnTransformer.

Compiled by train from the fitted attributes of the pipeline (imputer statistics,
scaler means and scales, one-hot categories, coefficients, tree nodes, calibrators) and
stored beside it in the logged model as plain arrays (`save`: a NumPy .npz file, no
pickle), so loading a model to score needs neither scikit-learn nor skops: `load` builds
only the parts this module defines. Train stores the scorer it has read back from those
bytes, after comparing it with the pipeline: the sklearn pipeline stays the reference,
train refuses to log a model whose compiled form differs from it by more than a
tolerance, and the served model falls back to it for anything this module does not
cover (compile_pipeline raises NotCompilable saying what).

Covered: a ColumnTransformer of SimpleImputer / StandardScaler / OneHotEncoder
pipelines (plus drop and passthrough); LogisticRegression, RandomForest / ExtraTrees /
DecisionTree classifiers, HistGradientBoostingClassifier (numeric splits), each
optionally inside CalibratedClassifierCV (sigmoid or isotonic); binary labels only.

Explanations: where the log-odds is exactly a sum over input fields (a logistic
regression, alone or under one sigmoid calibrator), `Additive` splits it into a base and
one contribution per field; every other estimator says why it cannot (`not_additive`).

Plain NumPy (and SciPy's expit, which scikit-learn itself uses) rather than ONNX
Runtime or a tree compiler: no new dependency in the logged model, and the same
floating-point operations as scikit-learn, so answers agree to ~1e-15, not ~1e-7.
Part of the sealed model package: every logged model carries this file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import IO, Any, Callable, Iterable, Sequence

import numpy as np
from scipy.special import expit

from .errors import UntrustedModel

# The contract with the reference, not a tuning knob: train refuses a model whose fast
# path differs from its sklearn pipeline by more than this in probability, on its own
# train/val/test rows and on this many seeded synthetic patients (domain/synthetic.py).
TOLERANCE = 1e-9
SYNTHETIC_ROWS = 10_000
SYNTHETIC_SEED = 20_240_612
# Tree traversal holds one node index per (row, tree): scored in slices of this many
# cells so a million-row batch through 300 trees needs megabytes, not gigabytes.
TREE_CELLS_PER_SLICE = 1 << 21


class NotCompilable(Exception):
    """The fitted pipeline holds something this module does not compile (says what)."""


# --------------------------------------------------------------------------- transform


@dataclass(frozen=True)
class _Impute:
    fill: np.ndarray  # per column

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(block), self.fill, block)


@dataclass(frozen=True)
class _Scale:
    mean: np.ndarray | None
    scale: np.ndarray | None

    def __call__(self, block: np.ndarray) -> np.ndarray:
        # The same two operations, in the same order, as StandardScaler.transform.
        if self.mean is not None:
            block = block - self.mean
        if self.scale is not None:
            block = block / self.scale
        return block


@dataclass(frozen=True)
class _OneHot:
    source: np.ndarray  # for each output column: the input column it encodes
    code: np.ndarray  # ... and the category it indicates

    def __call__(self, block: np.ndarray) -> np.ndarray:
        # An unknown code (or NaN) matches no category: all zeros, as handle_unknown="ignore".
        return (block[:, self.source] == self.code).astype(np.float64)


@dataclass(frozen=True)
class _Block:
    columns: np.ndarray  # input column indices
    steps: tuple[Callable[[np.ndarray], np.ndarray], ...]
    width: int  # output columns

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        block = rows[:, self.columns]
        for step in self.steps:
            block = step(block)
        return block

    @property
    def sources(self) -> np.ndarray:
        """For each output column, the input column it comes from (for a one-hot column,
        the column whose code it indicates): how an explanation sums columns back to fields."""
        sources = self.columns
        for step in self.steps:
            if isinstance(step, _OneHot):
                sources = sources[step.source]
        return sources


def _compile_step(step, width: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    kind = type(step).__name__
    if isinstance(step, SimpleImputer):
        if not (isinstance(step.missing_values, float) and np.isnan(step.missing_values)) or step.add_indicator:
            raise NotCompilable(f"{kind}: only missing_values=nan without add_indicator is compiled")
        fill = np.asarray(step.statistics_, dtype=np.float64)
        if np.isnan(fill).any():  # a column empty in training: sklearn drops it from the output
            raise NotCompilable(f"{kind}: a column had no values in training")
        return _Impute(fill), width
    if isinstance(step, StandardScaler):
        mean = None if step.mean_ is None or not step.with_mean else np.asarray(step.mean_, dtype=np.float64)
        scale = None if step.scale_ is None or not step.with_std else np.asarray(step.scale_, dtype=np.float64)
        return _Scale(mean, scale), width
    if isinstance(step, OneHotEncoder):
        if step.drop_idx_ is not None or getattr(step, "_infrequent_enabled", False):
            raise NotCompilable(f"{kind}: drop= and infrequent categories are not compiled")
        if step.handle_unknown not in ("ignore", "infrequent_if_exist"):
            raise NotCompilable(f"{kind}: handle_unknown={step.handle_unknown!r} (only 'ignore' is compiled)")
        if getattr(step, "sparse_output", False):
            raise NotCompilable(f"{kind}: sparse output is not compiled")
        try:
            categories = [np.asarray(c, dtype=np.float64) for c in step.categories_]
        except (TypeError, ValueError):
            raise NotCompilable(f"{kind}: non-numeric categories") from None
        source = np.concatenate([np.full(len(c), i) for i, c in enumerate(categories)]).astype(np.intp)
        return _OneHot(source, np.concatenate(categories)), len(source)
    raise NotCompilable(f"{kind} is not compiled")


def _compile_transform(transformer, features: Sequence[str]) -> tuple[_Block, ...]:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(transformer, ColumnTransformer):
        raise NotCompilable(f"preprocessing {type(transformer).__name__} is not a ColumnTransformer")
    if getattr(transformer, "sparse_output_", False):
        raise NotCompilable("ColumnTransformer with sparse output")
    position = {name: i for i, name in enumerate(features)}
    blocks = []
    for _, fitted, columns in transformer.transformers_:
        if isinstance(fitted, str) and fitted == "drop":
            continue
        indices = _column_indices(columns, features, position)
        if len(indices) == 0:
            continue
        steps = ([] if fitted == "passthrough" else [s for _, s in fitted.steps] if isinstance(fitted, Pipeline)
                 else [fitted])
        compiled, width = [], len(indices)
        for step in steps:
            if step == "passthrough" or step is None:
                continue
            op, width = _compile_step(step, width)
            compiled.append(op)
        blocks.append(_Block(np.asarray(indices, dtype=np.intp), tuple(compiled), width))
    expected = transformer.get_feature_names_out()
    if sum(b.width for b in blocks) != len(expected):
        raise NotCompilable(f"compiled {sum(b.width for b in blocks)} output columns, "
                            f"the transformer has {len(expected)}")
    return tuple(blocks)


def _column_indices(columns, features: Sequence[str], position: dict[str, int]) -> list[int]:
    if isinstance(columns, slice):
        return list(range(len(features)))[columns]
    selected = list(np.atleast_1d(columns))
    if selected and isinstance(selected[0], (bool, np.bool_)):
        return [i for i, keep in enumerate(selected) if keep]
    if selected and isinstance(selected[0], (int, np.integer)):
        return [int(i) for i in selected]
    try:
        return [position[str(c)] for c in selected]
    except KeyError as err:
        raise NotCompilable(f"column {err} is not an input feature") from None


# --------------------------------------------------------------------------- estimators


@dataclass(frozen=True)
class _Linear:
    """LogisticRegression, binary: P = expit(X·w + b), as its predict_proba computes it."""

    weights: np.ndarray
    intercept: float

    @classmethod
    def of(cls, model) -> "_Linear":
        if model.coef_.shape[0] != 1:
            raise NotCompilable("LogisticRegression with more than two classes")
        return cls(np.ascontiguousarray(model.coef_[0], dtype=np.float64), float(model.intercept_[0]))

    def response(self, rows: np.ndarray) -> np.ndarray:  # decision_function
        return rows @ self.weights + self.intercept

    def probability(self, rows: np.ndarray) -> np.ndarray:
        return expit(self.response(rows))


@dataclass(frozen=True)
class _Trees:
    """Many binary trees walked at once: every node of every tree in flat arrays, a leaf
    pointing to itself, so `depth` steps take each (row, tree) from its root to its leaf.
    Each step goes left where the value is <= the threshold, or is missing and the node
    sends missing values left: scikit-learn's rule for both tree kinds."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    leaf_value: np.ndarray
    roots: np.ndarray
    depth: int
    float32: bool  # compare float32 copies of the input, as scikit-learn's forests do

    @classmethod
    def from_nodes(cls, trees: Iterable[dict], float32: bool) -> "_Trees":
        parts = {key: [] for key in ("feature", "threshold", "left", "right", "missing_left", "value")}
        roots, depth, offset = [], 0, 0
        for tree in trees:
            n = len(tree["feature"])
            leaf = tree["leaf"]
            own = np.arange(n)
            parts["feature"].append(np.where(leaf, 0, tree["feature"]))
            parts["threshold"].append(np.where(leaf, np.inf, tree["threshold"]))
            parts["left"].append(np.where(leaf, own, tree["left"]) + offset)
            parts["right"].append(np.where(leaf, own, tree["right"]) + offset)
            parts["missing_left"].append(np.asarray(tree["missing_left"], dtype=bool))
            parts["value"].append(np.where(leaf, tree["value"], 0.0))
            roots.append(offset)
            depth = max(depth, tree["depth"])
            offset += n
        joined = {key: np.concatenate(values) for key, values in parts.items()}
        return cls(joined["feature"].astype(np.intp), joined["threshold"].astype(np.float64),
                   joined["left"].astype(np.intp), joined["right"].astype(np.intp), joined["missing_left"],
                   joined["value"].astype(np.float64), np.asarray(roots, dtype=np.intp), int(depth), float32)

    def leaf_values(self, rows: np.ndarray) -> np.ndarray:
        """(rows, trees) value of the leaf each row reaches in each tree."""
        if self.float32:
            rows = rows.astype(np.float32)
        trees = len(self.roots)
        per_slice = max(1, TREE_CELLS_PER_SLICE // trees)
        out = np.empty((len(rows), trees))
        for start in range(0, len(rows), per_slice):
            chunk = np.ascontiguousarray(rows[start:start + per_slice])
            flat, width = chunk.ravel(), chunk.shape[1]
            row_start = (np.arange(len(chunk)) * width)[:, None]
            node = np.broadcast_to(self.roots, (len(chunk), trees))
            with_missing = bool(np.isnan(chunk).any())
            for _ in range(self.depth):
                value = flat[row_start + self.feature[node]]
                go_left = value <= self.threshold[node]
                if with_missing:
                    go_left |= np.isnan(value) & self.missing_left[node]
                node = np.where(go_left, self.left[node], self.right[node])
            out[start:start + per_slice] = self.leaf_value[node]
        return out


@dataclass(frozen=True)
class _Forest:
    """RandomForest / ExtraTrees / DecisionTree classifiers: the mean of the trees'
    leaf class-1 fractions (scikit-learn 1.4+ stores fractions in tree_.value)."""

    trees: _Trees

    @classmethod
    def of(cls, model) -> "_Forest":
        from sklearn.tree import BaseDecisionTree

        trees = [model] if isinstance(model, BaseDecisionTree) else list(model.estimators_)
        if trees[0].n_outputs_ != 1 or len(model.classes_) != 2:
            raise NotCompilable(f"{type(model).__name__}: only one binary output is compiled")
        nodes = []
        for estimator in trees:
            tree = estimator.tree_
            fractions = tree.value[:, 0, :2]
            totals = fractions.sum(axis=1)
            nodes.append({"feature": tree.feature, "threshold": tree.threshold, "left": tree.children_left,
                          "right": tree.children_right, "leaf": tree.children_left == -1,
                          "missing_left": tree.missing_go_to_left.astype(bool),
                          "value": fractions[:, 1] / np.where(totals == 0, 1.0, totals), "depth": tree.max_depth})
        return cls(_Trees.from_nodes(nodes, float32=True))

    def probability(self, rows: np.ndarray) -> np.ndarray:
        return self.trees.leaf_values(rows).mean(axis=1)

    def response(self, rows: np.ndarray) -> np.ndarray:  # no decision_function: calibration sees predict_proba[:, 1]
        return self.probability(rows)


@dataclass(frozen=True)
class _Boosting:
    """HistGradientBoostingClassifier, binary, numeric splits: P = expit(baseline + sum of leaves)."""

    baseline: float
    trees: _Trees

    @classmethod
    def of(cls, model) -> "_Boosting":
        if model.n_trees_per_iteration_ != 1:
            raise NotCompilable("HistGradientBoostingClassifier with more than two classes")
        if getattr(model, "_preprocessor", None) is not None:
            raise NotCompilable("HistGradientBoostingClassifier with categorical features")
        nodes = []
        for (predictor,) in model._predictors:
            table = predictor.nodes
            if table["is_categorical"].any():
                raise NotCompilable("HistGradientBoostingClassifier with categorical splits")
            nodes.append({"feature": table["feature_idx"], "threshold": table["num_threshold"],
                          "left": table["left"], "right": table["right"], "leaf": table["is_leaf"].astype(bool),
                          "missing_left": table["missing_go_to_left"].astype(bool), "value": table["value"],
                          "depth": int(table["depth"].max())})
        return cls(float(np.ravel(model._baseline_prediction)[0]), _Trees.from_nodes(nodes, float32=False))

    def response(self, rows: np.ndarray) -> np.ndarray:  # decision_function: the raw score
        return self.baseline + self.trees.leaf_values(rows).sum(axis=1)

    def probability(self, rows: np.ndarray) -> np.ndarray:
        return expit(self.response(rows))


@dataclass(frozen=True)
class _Sigmoid:
    """A sigmoid calibrator (_SigmoidCalibration): P = expit(-(a t + b))."""

    a: float
    b: float

    def __call__(self, score: np.ndarray) -> np.ndarray:
        return expit(-(self.a * score + self.b))


@dataclass(frozen=True)
class _Isotonic:
    """An isotonic calibrator with out_of_bounds='clip': the step function through its thresholds."""

    x: np.ndarray
    y: np.ndarray

    def __call__(self, score: np.ndarray) -> np.ndarray:
        return np.interp(np.clip(score, self.x[0], self.x[-1]), self.x, self.y)


@dataclass(frozen=True)
class _Calibrated:
    """CalibratedClassifierCV (sigmoid or isotonic): the mean over its fold members of
    the calibrator applied to the member's decision_function (or class-1 probability)."""

    members: tuple[tuple[object, _Sigmoid | _Isotonic], ...]  # (compiled estimator, its calibrator)

    @classmethod
    def of(cls, model) -> "_Calibrated":
        from sklearn.isotonic import IsotonicRegression

        if len(model.classes_) != 2:
            raise NotCompilable("CalibratedClassifierCV with more than two classes")
        members = []
        for member in model.calibrated_classifiers_:
            (calibrator,) = member.calibrators
            if isinstance(calibrator, IsotonicRegression):
                if calibrator.out_of_bounds != "clip":
                    raise NotCompilable("isotonic calibration without out_of_bounds='clip'")
                calibrate = _Isotonic(np.asarray(calibrator.X_thresholds_, dtype=np.float64),
                                      np.asarray(calibrator.y_thresholds_, dtype=np.float64))
            elif type(calibrator).__name__ == "_SigmoidCalibration":
                calibrate = _Sigmoid(float(calibrator.a_), float(calibrator.b_))
            else:
                raise NotCompilable(f"calibration by {type(calibrator).__name__}")
            members.append((estimator_scorer(member.estimator), calibrate))
        return cls(tuple(members))

    def probability(self, rows: np.ndarray) -> np.ndarray:
        total = np.zeros(len(rows))
        for estimator, calibrate in self.members:
            p = calibrate(estimator.response(rows))
            p[(1.0 < p) & (p <= 1.0 + 1e-5)] = 1.0  # as _CalibratedClassifier.predict_proba
            total += p
        return total / len(self.members)

    def response(self, rows: np.ndarray) -> np.ndarray:
        return self.probability(rows)


# --------------------------------------------------------------------------- explanations


class NotAdditive(Exception):
    """The estimator's log-odds is not exactly a sum over its input columns (says why)."""


def additive_form(estimator) -> tuple[np.ndarray, float]:
    """(weight per transformed column, intercept) with log-odds = columns · weights +
    intercept exactly, for a compiled estimator whose log-odds is linear; NotAdditive
    otherwise. A sigmoid calibrator maps a linear score z to the log-odds -(a z + b),
    still linear, so the weights scale by -a and the intercept absorbs b. An average of
    several calibrated members' probabilities, an isotonic step function or trees are not
    a sum over columns; approximate attributions are not offered as exact ones."""
    if isinstance(estimator, _Linear):
        return estimator.weights, estimator.intercept
    if isinstance(estimator, _Calibrated):
        if len(estimator.members) != 1:
            raise NotAdditive(f"the answer is the mean probability of {len(estimator.members)} calibrated models "
                              "(CalibratedClassifierCV with ensemble=True), which is not a sum on the log-odds")
        ((inner, calibrator),) = estimator.members
        if not isinstance(calibrator, _Sigmoid):
            raise NotAdditive("isotonic calibration is a step function of the score, not a sum on the log-odds")
        weights, intercept = additive_form(inner)
        return -calibrator.a * weights, -calibrator.a * intercept - calibrator.b
    if isinstance(estimator, _Forest):
        raise NotAdditive("a forest averages its trees' class fractions: its log-odds is not a sum over the inputs")
    if isinstance(estimator, _Boosting):
        raise NotAdditive("boosted trees' log-odds is a sum over trees, not over inputs; exact per-input "
                          "attributions would need TreeSHAP, which this model does not carry")
    raise NotAdditive(f"{type(estimator).__name__} has no exact additive form")


@dataclass(frozen=True)
class Additive:
    """The log-odds of a linear model split by input field: base + the sum of each field's
    contribution, where a field's contribution is the sum of weight x transformed value
    over its columns (its one-hot columns, or its one scaled column). The base is the
    log-odds with every transformed column at 0: the training mean of each scaled field,
    and no category of any one-hot field weighed."""

    weights: np.ndarray  # per transformed column, on the log-odds
    base: float
    membership: np.ndarray  # (transformed columns, fields) of 0/1: the field each column belongs to

    def contributions(self, transformed: np.ndarray) -> np.ndarray:
        """(rows, fields) contributions to the log-odds."""
        return (transformed * self.weights) @ self.membership


def estimator_scorer(model):
    """The compiled form of a fitted estimator (response and probability of class 1)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    if isinstance(model, LogisticRegression):
        return _Linear.of(model)
    if isinstance(model, (ForestClassifier, DecisionTreeClassifier)):
        return _Forest.of(model)
    if isinstance(model, HistGradientBoostingClassifier):
        return _Boosting.of(model)
    if isinstance(model, CalibratedClassifierCV):
        return _Calibrated.of(model)
    raise NotCompilable(f"estimator {type(model).__name__} is not compiled")


# --------------------------------------------------------------------------- the scorer


@dataclass(frozen=True)
class FastScorer:
    """Raw codebook features (float64, columns in `features` order, NaN for missing) in,
    probability of disease out. Inputs are not checked here: the model checks them
    against the codebook first (heart_disease_model/model.py)."""

    features: tuple[str, ...]
    blocks: tuple[_Block, ...]
    estimator: object
    kind: str  # what was compiled, e.g. "ColumnTransformer + LogisticRegression"
    additive: Additive | None = None  # the log-odds split by field, where it is exactly a sum
    not_additive: str = ""  # why not, when additive is None

    def transform(self, rows: np.ndarray) -> np.ndarray:
        return np.hstack([block(rows) for block in self.blocks]) if len(self.blocks) > 1 else self.blocks[0](rows)

    def probability(self, rows: np.ndarray) -> np.ndarray:
        return self.estimator.probability(self.transform(rows))

    def taking(self, features: Sequence[str]) -> "FastScorer":
        """The same scorer, taking its input columns (and giving contributions) in the order
        of `features`, which must name the same fields."""
        features = tuple(str(f) for f in features)
        if features == self.features:
            return self
        if sorted(features) != sorted(self.features):
            raise UntrustedModel(f"the stored fast path takes {sorted(self.features)}, the model's codebook "
                                 f"{sorted(features)}")
        position = np.array([features.index(name) for name in self.features], dtype=np.intp)  # old -> new
        blocks = tuple(replace(block, columns=position[block.columns]) for block in self.blocks)
        additive = None
        if self.additive is not None:
            membership = np.zeros_like(self.additive.membership)
            membership[:, position] = self.additive.membership
            additive = replace(self.additive, membership=membership)
        return replace(self, features=features, blocks=blocks, additive=additive)

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        """(rows, fields in `features` order) contributions to the log-odds; with
        `additive.base` they sum to the log-odds of `probability(rows)`."""
        if self.additive is None:
            raise NotAdditive(self.not_additive)
        return self.additive.contributions(self.transform(rows))


def compile_pipeline(pipeline, features: Sequence[str] | None = None) -> FastScorer:
    """Compile a fitted Pipeline([("transform", ColumnTransformer), ("model", estimator)])
    fitted on a DataFrame of named features, to take its input columns in the order of
    `features` (default: the order it was fitted on). Raises NotCompilable naming the
    part that is not covered."""
    from sklearn.pipeline import Pipeline

    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise NotCompilable(f"{type(pipeline).__name__}: expected a Pipeline of a transformer and an estimator")
    (_, transformer), (_, model) = pipeline.steps
    fitted_on = getattr(transformer, "feature_names_in_", None)
    if fitted_on is None:
        raise NotCompilable("the transformer was not fitted on named columns")
    features = tuple(str(f) for f in (fitted_on if features is None else features))
    if set(features) != {str(f) for f in fitted_on}:
        raise NotCompilable(f"fitted on columns {sorted(map(str, fitted_on))}, not {sorted(features)}")
    blocks = _compile_transform(transformer, features)
    estimator = estimator_scorer(model)
    inner = model.estimator if type(model).__name__ == "CalibratedClassifierCV" else model
    kind = f"{type(transformer).__name__} + {type(model).__name__}"
    if inner is not model:
        kind += f"({type(inner).__name__}, {model.method})"
    try:
        weights, intercept = additive_form(estimator)
    except NotAdditive as why:
        return FastScorer(features, blocks, estimator, kind, None, str(why))
    sources = np.concatenate([block.sources for block in blocks])
    membership = (sources[:, None] == np.arange(len(features))[None, :]).astype(np.float64)
    return FastScorer(features, blocks, estimator, kind, Additive(weights, intercept, membership))


def for_pipeline(pipeline, features: Sequence[str]) -> tuple[FastScorer | None, str]:
    """(the scorer compiled to take columns in the order of `features`, "fast path: <what>");
    (None, "reference sklearn pipeline: <why>") when any part is not compiled, so the
    caller scores with the pipeline itself."""
    try:
        scorer = compile_pipeline(pipeline, features)
    except NotCompilable as err:
        return None, f"reference sklearn pipeline: {err}"
    return scorer, f"fast path: {scorer.kind}"


# --------------------------------------------------------------------------- storage

STRUCTURE = "structure"  # the .npz entry describing how the other entries (arrays) fit together


def save(scorer: FastScorer, file: str | IO[bytes]) -> None:
    """Write `scorer` as an .npz file: its arrays, plus a JSON description of the parts
    that hold them (part names and plain values, no code)."""
    arrays: dict[str, np.ndarray] = {}
    structure = _describe(scorer, arrays)
    np.savez(file, **{STRUCTURE: np.array(json.dumps(structure))}, **arrays)


def load(file: str | IO[bytes]) -> FastScorer:
    """The scorer `save` wrote. NumPy reads it without unpickling, and only the parts this
    module defines are built: a file naming anything else is refused."""
    try:
        with np.load(file, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        scorer = _build(json.loads(str(arrays.pop(STRUCTURE))), arrays)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UntrustedModel(f"the stored fast path is not one this code wrote: {err}") from None
    if not isinstance(scorer, FastScorer):
        raise UntrustedModel(f"the stored fast path holds a {type(scorer).__name__}, not a FastScorer")
    return scorer


def _describe(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        key = f"array{len(arrays)}"
        arrays[key] = value
        return {"array": key}
    if is_dataclass(value):
        # By name: a process that loaded a model holds another copy of this module, whose
        # classes built the scorer; what is stored is data either way.
        if type(value).__name__ not in _PARTS:
            raise NotCompilable(f"{type(value).__name__} cannot be stored")
        return {"part": type(value).__name__,
                "fields": {field.name: _describe(getattr(value, field.name), arrays) for field in fields(value)}}
    if isinstance(value, (tuple, list)):
        return [_describe(item, arrays) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise NotCompilable(f"{type(value).__name__} cannot be stored")


def _build(description: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(description, list):
        return tuple(_build(item, arrays) for item in description)
    if isinstance(description, dict) and set(description) == {"array"}:
        return arrays[description["array"]]
    if isinstance(description, dict) and set(description) == {"part", "fields"}:
        part = _PARTS[description["part"]]
        return part(**{name: _build(value, arrays) for name, value in description["fields"].items()})
    if description is None or isinstance(description, (bool, int, float, str)):
        return description
    raise ValueError(f"unexpected entry {str(description)[:80]}")


# Every kind of part a stored scorer holds: what `load` may build.
_PARTS = {part.__name__: part for part in (FastScorer, Additive, _Block, _Impute, _Scale, _OneHot, _Trees,
                                           _Linear, _Forest, _Boosting, _Calibrated, _Sigmoid, _Isotonic)}
