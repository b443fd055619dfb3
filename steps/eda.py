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

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from engine.context import StepContext
from heart_disease_model.codebook import Codebook


def feature_histograms(frame: pd.DataFrame, book: Codebook, bins: int) -> Figure:
    columns = 4
    rows = -(-len(book.features) // columns)
    fig = Figure(figsize=(4 * columns, 3 * rows))
    axes = fig.subplots(rows, columns).ravel()
    for ax, name in zip(axes, book.features):
        discrete = book.columns[name].codes is not None
        sns.histplot(data=frame, x=name, hue=book.label, ax=ax, bins=None if discrete else bins,
                     discrete=discrete, multiple="dodge" if discrete else "layer", stat="count")
        ax.set_title(book.columns[name].description.split(" (")[0], fontsize=9)
    for ax in axes[len(book.features):]:
        ax.set_visible(False)
    fig.suptitle(f"Features by {book.label} (1 = disease)")
    fig.tight_layout()
    return fig


def correlation_heatmap(frame: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(9, 8))
    ax = fig.subplots()
    sns.heatmap(frame.corr(numeric_only=True), ax=ax, cmap="vlag", center=0, annot=True, fmt=".2f",
                annot_kws={"size": 7})
    ax.set_title("Pearson correlation")
    fig.tight_layout()
    return fig


def class_balance(frame: pd.DataFrame, label: str) -> Figure:
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    counts = frame[label].value_counts().sort_index()
    names = {0: "healthy (0)", 1: "disease (1)"}
    ax.bar([names[int(k)] for k in counts.index], counts.to_numpy(), color=["#4c72b0", "#c44e52"][: len(counts)])
    for position, count in enumerate(counts.to_numpy()):
        ax.text(position, count, str(count), ha="center", va="bottom")
    ax.set(xlabel=label, ylabel="rows", title="Class balance")
    fig.tight_layout()
    return fig


def missingness(frame: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    share = frame.isna().mean() * 100
    ax.bar(share.index, share.to_numpy(), color="#8172b2")
    ax.set(ylabel="% missing", title=f"Missing values ({int(frame.isna().sum().sum())} cells)")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
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
