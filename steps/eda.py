"""eda: look at the ingested table before modelling it. Logs PNGs (feature histograms
by label, correlation heatmap, class balance, missingness) and one self-contained HTML
report with the plots embedded. Nothing downstream reads eda: `main` runs it beside
the chain.

The summary table, class balance and missingness count every row; histograms and
correlations draw a seeded sample of at most `eda.plot_rows` rows (a histogram of
100,000 rows looks like one of a million, and drawing a million takes half a minute
beside the chain).

Figures are built with matplotlib's object API (no pyplot), so this is safe in a
background thread and needs no display.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from engine.context import StepContext
from heart_disease_model.codebook import Codebook

# The label's values as every figure names and colours them.
LABEL_GROUPS = ((0, "healthy (0)", "#4c72b0"), (1, "disease (1)", "#c44e52"))


def feature_histograms(frame: pd.DataFrame, book: Codebook, bins: int) -> Figure:
    """One panel per feature, healthy and disease side by side: bars per code for coded
    columns, overlaid histograms on shared bins for measured ones. Plain matplotlib with one
    legend for the figure: seaborn's histplot and a legend per panel tripled eda's time."""
    columns = 4
    rows = -(-len(book.features) // columns)
    fig = Figure(figsize=(4 * columns, 3 * rows), layout="constrained")
    axes = fig.subplots(rows, columns).ravel()
    groups = [(value, name, colour) for value, name, colour in LABEL_GROUPS if (frame[book.label] == value).any()]
    for ax, feature in zip(axes, book.features):
        values = frame[feature]
        by_label = [values[frame[book.label] == value].dropna().to_numpy() for value, _, _ in groups]
        if book.columns[feature].codes is not None:
            codes = np.sort(values.dropna().unique())
            width = 0.8 / len(groups)
            for offset, (counted, (_, name, colour)) in enumerate(zip(by_label, groups)):
                counts = [(counted == code).sum() for code in codes]
                ax.bar(codes + (offset - (len(groups) - 1) / 2) * width, counts, width, color=colour, label=name)
            ax.set_xticks(codes)
        else:
            edges = np.histogram_bin_edges(values.dropna().to_numpy(), bins=bins)
            for counted, (_, name, colour) in zip(by_label, groups):
                ax.hist(counted, bins=edges, color=colour, alpha=0.55, label=name)
        ax.set(xlabel=feature, ylabel="count")
        ax.set_title(book.columns[feature].description.split(" (")[0], fontsize=9)
    for ax in axes[len(book.features):]:
        ax.set_visible(False)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper right")
    fig.suptitle(f"Features by {book.label} (1 = disease)")
    return fig


def correlation_heatmap(frame: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(9, 8), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(frame.corr(numeric_only=True), ax=ax, cmap="vlag", center=0, annot=True, fmt=".2f",
                annot_kws={"size": 7})
    ax.set_title("Pearson correlation")
    return fig


def class_balance(frame: pd.DataFrame, label: str) -> Figure:
    fig = Figure(figsize=(4, 3), layout="constrained")
    ax = fig.subplots()
    counts = frame[label].value_counts()
    shown = [(name, colour, int(counts[value])) for value, name, colour in LABEL_GROUPS if value in counts.index]
    ax.bar([name for name, _, _ in shown], [count for _, _, count in shown], color=[colour for _, colour, _ in shown])
    for position, (_, _, count) in enumerate(shown):
        ax.text(position, count, str(count), ha="center", va="bottom")
    ax.set(xlabel=label, ylabel="rows", title="Class balance")
    return fig


def missingness(frame: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    share = frame.isna().mean() * 100
    ax.bar(share.index, share.to_numpy(), color="#8172b2")
    ax.set(ylabel="% missing", title=f"Missing values ({int(frame.isna().sum().sum())} cells)")
    ax.tick_params(axis="x", rotation=60)
    return fig


def count_figures(frame: pd.DataFrame, book: Codebook) -> dict[str, Figure]:
    """Class balance and missing cells, counted on every row of `frame` (cheap)."""
    return {"class_balance": class_balance(frame, book.label), "missingness": missingness(frame)}


def sample_figures(sample: pd.DataFrame, book: Codebook, bins: int) -> dict[str, Figure]:
    """Histograms and correlations, drawn from `sample` (the slow part)."""
    return {"feature_histograms": feature_histograms(sample, book, bins),
            "correlation_heatmap": correlation_heatmap(sample)}


def plot_sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """The rows the plots draw: all of them, or a seeded random sample of `rows`."""
    return frame if len(frame) <= rows else frame.sample(n=rows, random_state=seed)


def summary_html(frame: pd.DataFrame, plotted_rows: int) -> str:
    """The report's opening: size, duplicates and summary statistics of every row."""
    return "\n".join([
        f"<h1>Exploratory data analysis</h1><p>{len(frame)} rows, {frame.shape[1]} columns, "
        f"{int(frame.duplicated().sum())} exact duplicate rows. "
        + (f"Histograms and correlations draw a random sample of {plotted_rows} rows.</p>"
           if plotted_rows < len(frame) else "</p>"),
        "<h2>Summary statistics</h2>",
        frame.describe().T.round(2).to_html(),
    ])


def html_report(summary: str, images: dict[str, Path]) -> str:
    """One HTML file with the summary (summary_html) and every plot inlined as base64."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>EDA: heart disease</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:.2em .5em}"
        "img{max-width:100%}</style></head><body>",
        summary,
    ]
    for name, path in images.items():
        encoded = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2><img src='data:image/png;base64,{encoded}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def run(ctx: StepContext) -> None:
    book = Codebook.from_config(ctx.cfg.schema)
    frame = ctx.read("raw")
    # Everything that counts every row first; then let go of the table (under `main` it
    # would otherwise stay in memory while the plots are drawn beside the chain).
    plotted = plot_sample(frame, ctx.cfg.eda.plot_rows, ctx.cfg.eda.seed)
    counts, summary = count_figures(frame, book), summary_html(frame, len(plotted))
    del frame
    ctx.done_with("raw")
    figures = {**sample_figures(plotted, book, ctx.cfg.eda.histogram_bins), **counts}
    images = {}
    for name, figure in figures.items():
        figure.set_dpi(ctx.cfg.eda.dpi)
        images[name] = ctx.write(name, figure)
    ctx.write("report", html_report(summary, images))
    ctx.summary.update(plots=len(images), plotted_rows=len(plotted))


if __name__ == "__main__":
    from engine.cli import launch_step

    launch_step("eda")
