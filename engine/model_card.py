"""The model card every registered version carries: what the model is for, what it was
trained on, how good it is (with intervals), how it travels to other sites, how its
threshold trades errors, what it cannot do, and the command that rebuilds it.

`card_sections` is pure (facts in, sections out); `to_markdown` and `to_html` render
the same sections, so the two files never disagree.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from engine.cards import grid, page


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: list[list[Any]] = field(default_factory=list)  # first row is the header
    # (path beside the card in the run's artifacts, local file): linked from the Markdown,
    # embedded in the HTML so the page stands alone.
    image: Optional[tuple[str, Path]] = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"


INPUTS = "Inputs"
# The sections a registered version's description holds, in this order: the registry's
# version page shows the description and, without an input schema, no inputs otherwise.
SUMMARY_SECTIONS = ("Intended use", "Performance", INPUTS)


def card_sections(facts: dict[str, Any]) -> list[Section]:
    """Sections of the card from the facts register gathers from the run lineage."""
    m = facts["metrics"]
    sections = [
        Section("Intended use", [
            f"`{facts['name']}` version {facts['version']} estimates the probability that a patient has "
            "angiographic heart disease (more than 50 % narrowing of a major vessel, UCI `num > 0`) from the 13 "
            "UCI Heart Disease features, in UCI codes.",
            "**Not for clinical use.** It is a demonstration of an MLOps pipeline, trained on a few hundred "
            "patients from the 1980s; it has not been validated prospectively and must not inform the care of "
            "any person.",
        ]),
        Section("Training data", [
            f"Source: `{facts['data_source']}`; sites: {', '.join(facts['sites']) or 'n/a'}; "
            f"{facts['rows']} rows after validation, {facts['duplicates_dropped']} exact duplicates dropped "
            f"before splitting; train / validation / test: {facts['split_rows']}.",
            f"Data digest (MLflow dataset): `{facts['dataset_digest']}`; file checksums: "
            + ", ".join(f"{site} `{sha}`" for site, sha in facts["sha256"].items()) + ".",
            f"Missing cells: {_counts(facts['missing'])}; impossible values turned missing: "
            f"{_counts(facts['impossible'])}. Share of men: {facts['male_share']:.0%}.",
        ]),
        Section(INPUTS, [
            f"The model takes these {len(facts['codebook'])} fields, in UCI codes (the codebook); anything "
            "else is refused (HTTP 400): a value outside its codes or range, a missing or unknown field, and "
            "JSON `true` or `\"54\"` where a number belongs.",
            "Its signature declares no input schema, so the registry shows none: given one, MLflow's scoring "
            "server would turn `true` and `\"54\"` into numbers, or drop unknown fields, before the model "
            "could refuse them. The model checks every field itself, by the rules above.",
        ], [["field", "values"]] + [[name, rule] for name, rule in facts["codebook"].items()]),
        Section("Performance", [
            f"Model: {facts['model']}; calibration: {facts['calibration']}. Validation status: "
            f"**{facts['status']}** ({facts['reasons']}).",
            "Cross-validation: repeated stratified k-fold on train + validation; the interval is the 95 % "
            "corrected resampled t interval. Test: the held-out split, scored once. Accuracy, recall "
            "(sensitivity) and specificity are at the model's decision threshold.",
        ], [["metric", "cross-validated mean [95 % interval]", "test split"]] + [
            [name, f"{m[f'cv_{name}_mean']:.3f} [{m[f'cv_{name}_ci_low']:.3f}, {m[f'cv_{name}_ci_high']:.3f}]",
             _fmt(m.get(f"test_{name}", ""))]
            for name in ("roc_auc", "pr_auc", "brier", "accuracy", "recall", "specificity")
            if f"cv_{name}_mean" in m
        ]),
        Section("Calibration", _calibration_paragraphs(m)),
        Section("Decision threshold and risk levels", [
            f"Disease is predicted when the probability is at least **{facts['threshold']:.3f}**, chosen on the "
            f"validation split ({facts['threshold_rule']}). On the test split that gives sensitivity "
            f"{m['test_recall']:.2f} and specificity {m['test_specificity']:.2f}: "
            f"{facts['confusion']}. A lower threshold misses fewer patients and alarms more healthy people.",
            "Risk levels: " + ", ".join(f"{level} below {bound:.3f}" if bound < 1 else f"{level} up to 1"
                                         for level, bound in facts["bands"].items()) + ".",
        ]),
    ]
    if facts.get("subgroups"):
        sections.append(_subgroup_section(facts["subgroups"]))
    if facts.get("explanation"):
        sections.append(_explanation_section(facts["explanation"], facts.get("contributions_plot")))
    if facts["external"]:
        sections.append(Section(
            "Other sites (external validation)",
            ["Scored on sites the model never saw in training; expect the numbers to move with case mix "
             "and with how each site measured its patients."] +
            [f"Not scored: {site}: {why}" for site, why in facts["external_unusable"].items()],
            [["site", "rows", "prevalence", "ROC-AUC", "Brier", "calibration slope", "intercept"]] + [
                [site, int(s["rows"]), _fmt(s["prevalence"]), _fmt(s["roc_auc"]), _fmt(s["brier"]),
                 _fmt(s["calibration_slope"]), _fmt(s["calibration_intercept"])]
                for site, s in facts["external"].items()
            ]))
    sections += [
        Section("Known limitations", [
            f"- Small sample: {facts['rows']} patients; the test split holds {facts['test_rows']}, so test metrics "
            "move by several points between splits; trust the cross-validated intervals more.",
            f"- Sex imbalance: {facts['male_share']:.0%} of the training patients are men; performance for women "
            "is less certain" + (" (see Subgroups: their intervals are wider)." if facts.get("subgroups") else "."),
            "- Site shift: trained on " + (", ".join(facts["sites"]) or "one source") + "; other hospitals code "
            "and measure differently (the Hungarian, Swiss and VA files miss most of `ca`, `thal`, `slope` and "
            "record cholesterol 0 for 'not measured').",
            "- Referral population from the 1980s: prevalence (~45 %) is far above that of the general public, so "
            "probabilities do not transfer to screening without recalibration.",
        ]),
        Section("Reproduce", [
            "From the repository at the commit below, with the same data file:",
            f"```\n{facts['command']}\n```",
            f"Commit: `{facts['commit']}`; train run `{facts['train_run_id']}`; evaluate run "
            f"`{facts['evaluate_run_id']}`.",
        ]),
    ]
    return sections


def _interval(values: dict[str, float]) -> str:
    return f"{values['estimate']:.2f} [{values['ci_low']:.2f}, {values['ci_high']:.2f}]"


def _calibration_paragraphs(m: dict[str, float]) -> list[str]:
    test = (f"On the test split (scored once, no interval) the slope is {m['test_calibration_slope']:.2f} and the "
            f"intercept {m['test_calibration_intercept']:.2f}; Brier score {m['test_brier']:.3f}.")
    if "cv_calibration_slope" not in m:  # an evaluate run from before out-of-fold calibration
        return ["Logistic recalibration line (perfect: slope 1, intercept 0; a slope above 1 means the "
                "probabilities are too timid, below 1 too extreme). " + test]
    return [
        "Logistic recalibration line of the cross-validated out-of-fold predictions (every train + validation "
        "patient scored by a model that did not see them, each repeat): slope "
        f"**{m['cv_calibration_slope']:.2f}** [{m['cv_calibration_slope_ci_low']:.2f}, "
        f"{m['cv_calibration_slope_ci_high']:.2f}], intercept {m['cv_calibration_intercept']:.2f} "
        f"[{m['cv_calibration_intercept_ci_low']:.2f}, {m['cv_calibration_intercept_ci_high']:.2f}] "
        "(perfect: slope 1, intercept 0; a slope above 1 means the probabilities are too timid, below 1 too "
        "extreme). " + test,
        "The reliability diagram is `plots/calibration.png` and the decision curve (net benefit against treating "
        "everyone or no one) `plots/decision_curve.png` of the evaluate run.",
    ]


def _subgroup_section(subgroups: dict[str, Any]) -> Section:
    """The subgroup table evaluate measured on the out-of-fold predictions (subgroups.json)."""
    rows = [["subgroup", "patients", "with disease", "ROC-AUC", "calibration slope", "calibration intercept",
             f"sensitivity at {subgroups['threshold']:.3f}"]]
    for group in subgroups["subgroups"]:
        m = group["metrics"]
        rows.append([group["label"], group["rows"], f"{group['prevalence']:.0%}", _interval(m["roc_auc"]),
                     _interval(m["calibration_slope"]), _interval(m["calibration_intercept"]),
                     _interval(m["sensitivity"])])
    notes = [f"Not measured: {name}: {why}" for name, why in subgroups.get("not_measured", {}).items()]
    return Section("Subgroups", [
        "How the model does for each group of patients, on the cross-validated out-of-fold predictions of the "
        "train + validation patients; [95 % interval]. Small groups have wide intervals: a gap inside them is not "
        "evidence of equal performance.",
        subgroups.get("method", ""), *notes], rows)


def _explanation_section(explanation: dict[str, Any], plot: Optional[Path]) -> Section:
    if "unavailable" in explanation:
        return Section("What drives the answers", [
            "This model gives no per-answer explanation: " + explanation["unavailable"] + ". Its answers carry "
            "`\"explanation\": null` with this reason rather than an approximation."])
    rows = [["field", "mean absolute contribution to the log-odds"]] + [
        [name, f"{value:.3f}"] for name, value in explanation["mean_abs_contribution"].items()]
    return Section("What drives the answers", [
        "Every answer can carry an exact additive explanation (`/predict?explain=true`, `params: {explain: true}`, "
        "`score.explain=true`): the model's log-odds is a base of "
        f"{explanation['base_log_odds']:.3f} plus one contribution per input field. Below, each field's mean "
        f"absolute contribution over the {explanation['rows']} train + validation patients: how far it moves a "
        "typical answer, in either direction."], rows,
        image=("plots/feature_contributions.png", plot) if plot else None)


def contributions_figure(mean_abs: dict[str, float]):
    """Horizontal bars of the mean absolute contribution per field, largest on top."""
    from matplotlib.figure import Figure

    names = list(mean_abs)[::-1]
    fig = Figure(figsize=(6, 0.3 * len(names) + 1.2))
    ax = fig.subplots()
    ax.barh(names, [mean_abs[n] for n in names], color="#4c72b0")
    ax.set(xlabel="mean |contribution| to the log-odds", title="What drives the answers")
    fig.tight_layout()
    return fig


def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.table:
            header, *rows = section.table
            lines.append("| " + " | ".join(map(str, header)) + " |")
            lines.append("| " + " | ".join("---" for _ in header) + " |")
            lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
            lines.append("")
        if section.image:
            lines += [f"![{section.title}]({section.image[0]})", ""]
    return "\n".join(lines)


def summary_markdown(sections: list[Section], decision: str, card_uri: str) -> str:
    """The registry version's description: the decision, then what the model is for, how
    good it is and what it takes (the registry UI renders Markdown), and where the whole card is."""
    by_title = {section.title: section for section in sections}
    chosen = [by_title[title] for title in SUMMARY_SECTIONS if title in by_title]
    body = to_markdown("", chosen).split("\n", 2)[2]  # without the empty title line
    return f"**{decision}**\n\n{body}\nThe whole card: `{card_uri}` (and `model_card.html` beside it)."


def _inline(text: str) -> str:
    """The little Markdown the paragraphs use: **bold** and `code`."""
    out, parts = [], html.escape(text).split("`")
    for index, part in enumerate(parts):
        if index % 2:
            out.append(f"<code>{part}</code>")
        else:
            bold = part.split("**")
            out.append("".join(f"<strong>{b}</strong>" if i % 2 else b for i, b in enumerate(bold)))
    return "".join(out)


def to_html(title: str, sections: list[Section]) -> str:
    body = []
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for paragraph in section.paragraphs:
            if paragraph.startswith("```"):
                body.append(f"<pre>{html.escape(paragraph.strip('`').strip())}</pre>")
            else:
                body.append(f"<p>{_inline(paragraph)}</p>")
        if section.table:
            header, *rows = [[str(h) for h in section.table[0]], *section.table[1:]]
            body.append(grid(header, [dict(zip(header, map(_fmt, row))) for row in rows]))
        if section.image:
            encoded = base64.b64encode(section.image[1].read_bytes()).decode()
            body.append(f"<img alt='{html.escape(section.title)}' src='data:image/png;base64,{encoded}'>")
    return page(title, body)
