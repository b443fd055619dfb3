"""Screenshot of the experiment's Models tab in the real `mlflow ui`, for the README (docs/models-tab.png).

    .venv/bin/pip install -r requirements-docs.txt     # Playwright, into the project's venv
    apt-get install -y chromium                         # the browser it drives (no `playwright install`)
    .venv/bin/python scripts/screenshot_models.py      # [hydra overrides] [--models a,b] [--tracking-uri URI] [-o OUT]

In a temp folder (nothing lands in the project): `python -m steps.main` once per model into a
fresh SQLite store (data: HEART_DISEASE_DATA_URL, default tests/data/processed.cleveland.data),
`mlflow ui` on it, and the experiment's Models tab in headless Chromium, its columns chosen in the
page's own Columns menu: each logged model with the metrics evaluate linked to it. `--tracking-uri`
skips the pipeline runs.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from playwright.sync_api import Locator, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from ui_screenshots import (
    PROJECT_ROOT,
    api,
    chromium,
    experiment_id,
    log,
    make_room,
    run_command,
    running_ui,
    scratch,
    use_fresh_store,
)

DEFAULT_OVERRIDES = ["evaluate.cv_repeats=2"]  # a quicker cross-validation; the picture is the same
# The model-training view of the tab. MLflow 3.17's UI ignores the experiment's
# mlflow.experimentKind tag for this: a per-browser switch decides, GenAI unless told.
VIEW = "workflowType=machine_learning"
# Columns of the picture (the Columns menu's labels), after the pinned Model name and Created.
ATTRIBUTES = ["Registered models"]
PARAMS = ["model._target_"]  # which estimator: every logged model here is named "model"
TREE_NODE = ".du-bois-light-tree-treenode"
# Horizontal overflow of the models table: the columns that do not fit.
OVERFLOW = """() => Math.max(0, ...[...document.querySelectorAll(".ag-body-horizontal-scroll-viewport")]
  .map(e => e.scrollWidth - e.clientWidth))"""
TABLE_BOTTOM = """() => { const rows = [...document.querySelectorAll(".ag-center-cols-container .ag-row")];
  return rows.length ? Math.ceil(Math.max(...rows.map(r => r.getBoundingClientRect().bottom))) : null; }"""


def logged_models(base: str, experiment: str, metrics: list[str]) -> list[dict]:
    """The experiment's logged models, each with the metrics wanted in the picture: a model
    without them means evaluate's metrics were not linked to it (logged without model_id)."""
    models = api(base, "/api/2.0/mlflow/logged-models/search",
                 {"experiment_ids": [experiment], "max_results": 100}).get("models", [])
    if not models:
        raise SystemExit(f"experiment {experiment} has no logged models")
    for model in models:
        found = {m["key"] for m in model.get("data", {}).get("metrics", [])}
        missing = [m for m in metrics if m not in found]
        if missing:
            raise SystemExit(f"logged model {model['info']['model_id']} has no metric {', '.join(missing)}: "
                             f"the step that computed it did not log it with model_id")
    return models


def tree_node(page: Page, title: str, state: str = "") -> Locator:
    """The Columns menu's entry titled `title` exactly (with the class suffix `state`, if given)."""
    return page.locator(TREE_NODE + (f".du-bois-light-tree-treenode-{state}" if state else ""),
                        has=page.locator(".du-bois-light-tree-title").filter(
                            has_text=re.compile(f"^{re.escape(title)}$"))).first


def set_checked(node: Locator, checked: bool) -> None:
    """Tick or clear an entry (a group: every column in it). A half-ticked group ticks all on
    the first click, so it may take two."""
    for _ in range(2):
        classes = node.get_attribute("class") or ""
        state = "checkbox-checked" in classes or "checkbox-indeterminate" in classes
        if state == checked and "checkbox-indeterminate" not in classes:
            return
        node.locator(".du-bois-light-tree-checkbox").click()


def expand(page: Page, title: str) -> None:
    """Open a group of the Columns menu. A click while the menu re-renders after the last one
    can be lost, so it is repeated until the group shows open."""
    for _ in range(5):
        tree_node(page, title).locator(".du-bois-light-tree-switcher").click()
        try:
            tree_node(page, title, "switcher-open").wait_for(state="attached", timeout=3000)
            return
        except PlaywrightTimeout:
            pass
    raise SystemExit(f"the Columns menu's group {title!r} does not open")


def choose_columns(page: Page, metrics: list[str]) -> None:
    """Through the page's Columns menu: only ATTRIBUTES, PARAMS and `metrics`."""
    page.get_by_role("button", name="Columns").click()
    set_checked(tree_node(page, "Metrics"), False)
    set_checked(tree_node(page, "Parameters"), False)
    for title in ["Status", "Logged from", "Source run", "Registered models", "Dataset"]:
        if tree_node(page, title).count():  # the menu lists the attributes some model has
            set_checked(tree_node(page, title), title in ATTRIBUTES)
    # The metric groups (one per dataset, and "No dataset") and Parameters open to list their columns.
    closed = page.locator(f"{TREE_NODE}:has(.du-bois-light-tree-switcher_close)")
    for title in closed.locator(".du-bois-light-tree-title").all_inner_texts():
        expand(page, title)
    for title in [*PARAMS, *metrics]:
        node = tree_node(page, title)
        if not node.count():
            raise SystemExit(f"the Columns menu has no column {title}")
        set_checked(node, True)
    page.keyboard.press("Escape")
    page.locator("h2, h1").filter(has_text=re.compile("^Models$")).first.click()  # closes the menu
    for param in PARAMS:  # as wide as their values: a double click on the header's edge
        page.locator(f'.ag-header-cell[col-id="params.{param}"] .ag-header-cell-resize').dblclick()


def screenshot(executable: str, url: str, out: Path, width: int, height: int, metrics: list[str],
               models: list[dict], settle: float, timeout: float) -> None:
    with chromium(executable) as browser:
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(timeout * 1000)
        log(f"open {url}")
        page.goto(url)
        page.locator(".ag-center-cols-container .ag-row").nth(len(models) - 1).wait_for()
        page.wait_for_timeout(1000)
        make_room(page)
        choose_columns(page, metrics)
        page.wait_for_timeout(settle * 1000)
        # Every column header and every model's values on the page, as the REST API gives them.
        text = page.evaluate("document.body.innerText")
        for model in models:
            values = {m["key"]: m["value"] for m in model["data"]["metrics"]}
            for metric in metrics:
                if metric not in text or repr(values[metric]) not in text:
                    raise SystemExit(f"the Models tab does not show {metric} = {values[metric]} "
                                     f"of logged model {model['info']['model_id']}")
        if page.evaluate(OVERFLOW) > 0:
            log(f"warning: the table is wider than {width} px; its last columns are cut (try --width)")
        bottom = page.evaluate(TABLE_BOTTOM)
        clip_height = min(height, bottom + 24) if bottom else height
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=out, clip={"x": 0, "y": 0, "width": width, "height": clip_height})
        log(f"{width}x{clip_height} px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*",
                        help=f"Hydra overrides for every steps.main (default: {' '.join(DEFAULT_OVERRIDES)})")
    parser.add_argument("--models", default="logreg,random_forest",
                        help="one steps.main per model (conf/model), each logging a model")
    parser.add_argument("-o", "--output", type=Path, default=PROJECT_ROOT / "docs" / "models-tab.png")
    parser.add_argument("--tracking-uri", help="use this store's logged models instead of running the pipeline")
    parser.add_argument("--metrics", default="cv_roc_auc_mean,test_roc_auc,test_brier",
                        help="metric columns of the table, each linked to every logged model")
    parser.add_argument("--width", type=int, default=1600, help="width of the PNG in pixels")
    parser.add_argument("--height", type=int, default=800, help="viewport height; the PNG ends below the table")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait after choosing the columns")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the page to render")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser executable")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (store, logs)")
    args = parser.parse_args()

    started = time.monotonic()
    metrics = args.metrics.split(",")
    with scratch("models-tab-", args.keep) as (tmp, env):
        tracking_uri = args.tracking_uri
        if not tracking_uri:
            tracking_uri = use_fresh_store(tmp, env)
            for number, model in enumerate(args.models.split(","), 1):
                run_command("steps.main", [f"model={model}", *(args.overrides or DEFAULT_OVERRIDES)],
                            tmp, env, f"main-{number}.log")
        with running_ui(tracking_uri, tmp, env) as base:
            experiment = experiment_id(base)
            models = logged_models(base, experiment, metrics)
            log(f"experiment {experiment}: {len(models)} logged models")
            url = f"{base}/#/experiments/{experiment}/models?{VIEW}"
            screenshot(args.chromium, url, args.output.resolve(), args.width, args.height, metrics, models,
                       args.settle, args.timeout)
    log(f"saved {args.output} ({args.output.stat().st_size / 1024:.0f} KB) in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
