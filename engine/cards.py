"""Cards: one self-contained HTML page per step run (`card.html`) and one for the
pipeline (`card.html` of the `main` run), so a person learns what happened without
reading logs. Pure functions: facts in, HTML out.

A card that leads to other cards (the pipeline's to its steps', a sweep's to its models')
carries them, folded, instead of linking to them: MLflow's artifact preview shows a card
in a sandboxed frame that follows no link to another artifact or page (measured in
Chromium against MLflow 3.17: relative, absolute and UI links are blocked or blank), and a
downloaded card has no store beside it.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from engine import names

STYLE = ("body{font-family:sans-serif;max-width:68em;margin:2em auto;line-height:1.4}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;"
         "text-align:left;vertical-align:top}code{font-size:.9em}img{max-width:100%}"
         "details{margin:.3em 0}summary{cursor:pointer}.card{border-left:3px solid #ccc;padding-left:1em}"
         ".ran{color:#1a7f37}.reused{color:#6e7781}.failed{color:#cf222e}pre{background:#f4f4f4;padding:.6em;overflow-x:auto}")


def page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>")


def _table(rows: list[tuple[Any, Any]], header: tuple[str, str] = ("", "")) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{v}</td></tr>" for k, v in rows)
    head = f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>" if any(header) else ""
    return f"<table>{head}{cells}</table>"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return f"<code>{html.escape(json.dumps(value, default=str))}</code>"
    return html.escape(str(value))


def step_card(step: str, run_id: str, inputs: dict[str, str], outputs: list[str], summary: dict[str, Any],
              metrics: dict[str, float], figures: dict[str, Path], seconds: float, cache_key: str) -> str:
    """The card of one step run."""
    body = [
        f"<p>Run <code>{run_id}</code> <span class='ran'>ran</span> in {seconds:.2f} s. A later run with the "
        f"same cache key reuses it instead of running again.</p>",
        "<h2>Inputs</h2>",
        _table([(html.escape(name), f"<code>{rid}</code>") for name, rid in inputs.items()],
               ("declared input (steps/pipeline.py)", "run id"))
        if inputs else "<p>None from MLflow: this step reads its source directly (see its config).</p>",
        "<h2>Outputs</h2><ul>" + "".join(f"<li><code>{html.escape(o)}</code></li>" for o in outputs) + "</ul>",
        "<h2>Key statistics</h2>", _table([(k, _value(v)) for k, v in summary.items()]),
    ]
    if metrics:
        body += ["<h2>Metrics</h2>", _table([(k, _value(v)) for k, v in sorted(metrics.items())])]
    for name, path in figures.items():
        encoded = base64.b64encode(path.read_bytes()).decode()
        body.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2><img src='data:image/png;base64,{encoded}'>")
    body += ["<h2>Cache key</h2>", f"<p><code>{cache_key}</code>: code of the step and the project modules it "
             "imports, the versions of the libraries that shape results, its config sections and its upstream "
             "run id.</p>"]
    return page(f"Step card: {step}", body)


def text_table(rows: list[list[str]]) -> str:
    """Rows (the first is the header) as aligned plain text, for the terminal."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def decision_text(register_summary: dict[str, Any]) -> str:
    """register's decision and its reason, as one line."""
    return ": ".join(str(register_summary[k]) for k in ("decision", "reason") if k in register_summary)


def card_body(card: str) -> str:
    """The content of a card page (what its <body> holds), to show inside another card."""
    start, end = card.find("<body>"), card.rfind("</body>")
    return card[start + len("<body>"):end] if start >= 0 and end > start else html.escape(card)


_FIGURE = re.compile(r"<img src='data:image/[^']*'>")


def folded_card(title: str, card: str | None, figures: bool = True) -> str:
    """Another run's card, folded under `title` (a click opens it). Without `figures`, each
    figure is left out with a note, where many cards would make a page too heavy."""
    if card is None:
        return f"<details><summary>{title}</summary><p>This run has no {names.CARD}.</p></details>"
    body = card_body(card)
    if not figures:
        body = _FIGURE.sub(f"<p><em>(figure left out here to keep this page light: it is in the "
                           f"run's own {names.CARD})</em></p>", body)
    return f"<details><summary>{title}</summary><div class='card'>{body}</div></details>"


def pipeline_card(parent_run_id: str, dag: str, results: list[dict[str, Any]], seconds: float,
                  status: str) -> str:
    """The card of a `main` run: the DAG, each step's outcome, and each step's own card
    (`card` of a result: its HTML, or None)."""
    rows = []
    for r in results:
        outputs = ", ".join(f"{k}={v}" for k, v in r["summary"].items())
        rows.append(f"<tr><td>{html.escape(r['step'])}</td><td class='{r['status']}'>{r['status']}</td>"
                    f"<td><code>{r['run_id']}</code></td><td>{r['seconds']:.2f}</td>"
                    f"<td>{html.escape(outputs)}</td></tr>")
    register = next((r["summary"] for r in results if r["step"] == "register"), {})
    decision = decision_text(register)
    body = [
        f"<p>Parent run <code>{parent_run_id}</code>: <span class='{status.lower()}'>{status}</span> in "
        f"{seconds:.1f} s. {sum(r['status'] == 'ran' for r in results)} step(s) ran, "
        f"{sum(r['status'] == 'reused' for r in results)} reused.</p>",
        "<h2>DAG</h2>", f"<pre>{html.escape(dag)}</pre>",
        "<h2>Steps</h2><table><tr><th>step</th><th>status</th><th>run id</th><th>seconds</th>"
        "<th>key outputs</th></tr>" + "".join(rows) + "</table>",
        "<h2>Registration</h2>", f"<p>{html.escape(str(decision or 'register did not run'))}</p>",
        "<h2>Step cards</h2><p>Each step's own card, as its run logged it: click a step to open it.</p>",
        *(folded_card(f"{html.escape(r['step'])} <span class='{r['status']}'>{r['status']}</span> "
                      f"<code>{r['run_id']}</code>", r.get("card")) for r in results),
    ]
    return page("Pipeline card", body)


def grid(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """A table with a header row."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def leaderboard_page(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """`leaderboard.html` of a sweep run: the ranked trials, best first."""
    return page("Sweep leaderboard", [grid(columns, rows)])


def sweep_card(run_id: str, setup: dict[str, Any], upstream: list[dict[str, Any]], trials: int, columns: list[str],
               rows: list[dict[str, Any]], failed: dict[str, str], metric: str, best: dict[str, Any],
               decision: str, seconds: float) -> str:
    """The card of a sweep run: how trials were chosen and run, the upstream runs, the ranked
    models and their evaluate cards (a row's `card`: its HTML or None, under `card_title`;
    figures only in the best model's, as a sweep may rank hundreds), the failed trials and why, the best model
    and what became of it."""
    body = [
        f"<p>Sweep run <code>{run_id}</code>: {trials - len(failed)} of {trials} trial(s) finished "
        f"({len(rows)} distinct model(s): trials with the same config share one train run), "
        f"{len(failed)} failed, in {seconds:.1f} s. Models are ranked by <code>{html.escape(metric)}</code>.</p>",
        "<h2>Setup</h2>", _table([(k, _value(v)) for k, v in setup.items()]),
        "<h2>Upstream (built or found before the trials)</h2>",
        _table([(u["step"], f"<code>{u['run_id']}</code> <span class='{u['status']}'>{u['status']}</span>")
                for u in upstream], ("step", "run id")),
        "<h2>Models</h2>", grid(columns, rows) if rows else "<p>None finished.</p>",
    ]
    if rows:
        body += ["<h2>Evaluate cards</h2><p>Each model's evaluate card, best first: click a model to open it.</p>",
                 *(folded_card(f"{rank}. {html.escape(str(row.get('card_title', '')))} "
                               f"<span class='{'ran' if row['status'] == 'VALIDATED' else 'failed'}'>"
                               f"{html.escape(str(row['status']))}</span>", row.get("card"), figures=rank == 1)
                   for rank, row in enumerate(rows, 1))]
    if failed:
        body += ["<h2 class='failed'>Failed trials</h2>",
                 _table([(name, f"<code>{html.escape(error)}</code>") for name, error in failed.items()],
                        ("trial", "error"))]
    if best:
        body += ["<h2>Best model</h2>", _table([(k, _value(v)) for k, v in best.items()])]
    body += ["<h2>Registration</h2>", f"<p>{html.escape(decision)}</p>"]
    return page("Sweep card", body)
