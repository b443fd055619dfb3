"""Screenshots of what a user sees in the real `mlflow ui` after `./run.sh main`, for docs/:
the runs table at the address `./run.sh ui` prints (docs/ui-runs.png), a `main` run's page
(ui-run.png), its pipeline card with a step card opened (ui-card.png), the experiment's Models
tab (models-tab.png) and the champion's registry page (ui-version.png).

    .venv/bin/pip install -r requirements-docs.txt     # Playwright, into the project's venv
    apt-get update && apt-get install -y chromium       # the browser it drives (no `playwright install`)
    .venv/bin/python scripts/screenshot_ui.py          # [hydra overrides] [--models a,b] [--tracking-uri URI] [-o DIR]

In a temp folder (nothing lands in the project): `python -m steps.main` once per model into a
fresh SQLite store (data: HEART_DISEASE_DATA_URL, default tests/data/processed.cleveland.data),
then `python -m tools.ui` (what `./run.sh ui` runs) on it, and each page in a fresh headless
Chromium, which opens the address tools.ui printed as a new user would. Each picture is checked
against the store first (the runs' metrics in the table, the step card in the card, the 13 inputs
on the version page), so a picture of a page that lost them is never taken. `--tracking-uri`
photographs an existing store instead of running the pipeline.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from playwright.sync_api import Browser, Locator, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from ui_screenshots import (
    PROJECT_ROOT,
    api,
    chromium,
    log,
    make_room,
    run_command,
    scratch,
    start_project_ui,
    stop,
    use_fresh_store,
)

# The model-training view (engine/names.py UI_MODEL_TRAINING_VIEW): MLflow 3.17's UI starts a new
# browser on its GenAI view, whatever the experiment's kind says.
VIEW = "workflowType=machine_learning"
HEADLINE = ["cv_roc_auc_mean", "cv_roc_auc_ci_low", "cv_roc_auc_ci_high", "test_roc_auc", "test_brier"]
INPUTS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca",
          "thal"]
REGISTERED = "heart-disease"  # conf/register/default.yaml model_name
TAG_ROLE = "pipeline.role"  # engine/names.py ROLE
# The Models tab's columns (its Columns menu's labels), after the pinned Model name and Created.
MODEL_ATTRIBUTES = ["Registered models"]
MODEL_METRICS = ["cv_roc_auc_mean", "test_roc_auc", "test_brier"]
TREE_NODE = ".du-bois-light-tree-treenode"
# Horizontal overflow of an ag-grid table: the columns that do not fit.
OVERFLOW = """() => Math.max(0, ...[...document.querySelectorAll(".ag-body-horizontal-scroll-viewport")]
  .map(e => e.scrollWidth - e.clientWidth))"""
TABLE_BOTTOM = """() => { const rows = [...document.querySelectorAll(".ag-center-cols-container .ag-row")];
  return rows.length ? Math.ceil(Math.max(...rows.map(r => r.getBoundingClientRect().bottom))) : null; }"""


# --------------------------------------------------------------------------- the store, by REST


def main_runs(base: str, experiment: str) -> list[dict]:
    runs = api(base, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment], "filter": f"tags.`{TAG_ROLE}` = 'main' and attributes.status = 'FINISHED'",
        "max_results": 100, "order_by": ["attributes.start_time DESC"]}).get("runs", [])
    if not runs:
        raise SystemExit(f"experiment {experiment} has no finished main run")
    return runs


def metrics_of(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def logged_models(base: str, experiment: str) -> list[dict]:
    """The experiment's logged models, each with the metrics wanted in the Models tab: a model
    without them means evaluate's metrics were not linked to it (logged without model_id)."""
    models = api(base, "/api/2.0/mlflow/logged-models/search",
                 {"experiment_ids": [experiment], "max_results": 100}).get("models", [])
    if not models:
        raise SystemExit(f"experiment {experiment} has no logged models")
    for model in models:
        missing = [m for m in MODEL_METRICS if m not in metrics_of(model)]
        if missing:
            raise SystemExit(f"logged model {model['info']['model_id']} has no metric {', '.join(missing)}: "
                             f"the step that computed it did not log it with model_id")
    return models


# --------------------------------------------------------------------------- pages


def fresh_page(browser: Browser, width: int, height: int, timeout: float) -> Page:
    """A page in a context of its own: no local storage, so nothing a previous page chose."""
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(timeout * 1000)
    return page


def save(page: Page, out: Path, clip_height: int | None = None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = min(size["height"], clip_height) if clip_height else size["height"]
    page.screenshot(path=out, clip={"x": 0, "y": 0, "width": size["width"], "height": height})
    log(f"saved {out.name} ({size['width']}x{height} px)")


def runs_table(page: Page, address: str, runs: list[dict], out: Path) -> None:
    """The address tools.ui printed, in a new browser: the runs table, each main run's headline
    metrics in view without choosing a column."""
    log(f"open {address}")
    page.goto(address)
    for run in runs:
        page.get_by_text(run["info"]["run_name"], exact=True).first.wait_for()
    page.wait_for_timeout(1000)
    make_room(page)
    page.wait_for_timeout(1000)
    headers = page.evaluate("() => [...document.querySelectorAll('.ag-header-cell')].map(e => e.innerText.trim())")
    missing = [m for m in HEADLINE if m not in headers]
    if missing:
        raise SystemExit(f"the runs table shows no column {', '.join(missing)} (headers: {headers})")
    text = page.evaluate("document.body.innerText")
    for run in runs:
        value = metrics_of(run)["cv_roc_auc_mean"]
        if repr(value)[:8] not in text:
            raise SystemExit(f"the runs table does not show cv_roc_auc_mean = {value} of {run['info']['run_name']}")
    if page.evaluate(OVERFLOW) > 0:
        log("warning: the runs table is wider than the window; its last columns are cut (try --width)")
    save(page, out, (page.evaluate(TABLE_BOTTOM) or 0) + 40)


def run_page(page: Page, base: str, experiment: str, run: dict, out: Path) -> None:
    page.goto(f"{base}/#/experiments/{experiment}/runs/{run['info']['run_id']}?{VIEW}")
    page.get_by_text("About this run").first.wait_for()
    page.get_by_text("cv_roc_auc_mean", exact=True).first.wait_for()
    page.get_by_role("link", name=re.compile("^register")).first.wait_for()  # the child runs, loaded
    page.wait_for_timeout(1000)
    make_room(page)
    save(page, out)


def card_page(page: Page, base: str, experiment: str, run: dict, step: str, out: Path) -> None:
    """The main run's card.html in MLflow's artifact preview, with one step's card opened by a
    click, as a user opens it there (the preview follows no link: engine/cards.py)."""
    page.goto(f"{base}/#/experiments/{experiment}/runs/{run['info']['run_id']}/artifacts/card.html?{VIEW}")
    card = page.frame_locator("iframe.mlflow-html-iframe")
    summary = card.locator("summary").filter(has_text=re.compile(f"^{step} "))
    summary.wait_for()
    make_room(page)
    summary.click()
    opened = card.locator("details[open] h1").filter(has_text=f"Step card: {step}")
    opened.wait_for()
    card.locator("h2").filter(has_text="Step cards").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(1000)
    save(page, out)


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


def choose_model_columns(page: Page) -> None:
    """Through the Models tab's Columns menu: only MODEL_ATTRIBUTES and MODEL_METRICS (the model
    name, the family, is pinned)."""
    page.get_by_role("button", name="Columns").click()
    set_checked(tree_node(page, "Metrics"), False)
    set_checked(tree_node(page, "Parameters"), False)
    for title in ["Status", "Logged from", "Source run", "Registered models", "Dataset"]:
        if tree_node(page, title).count():  # the menu lists the attributes some model has
            set_checked(tree_node(page, title), title in MODEL_ATTRIBUTES)
    # The metric groups (one per dataset, and "No dataset") open to list their columns.
    closed = page.locator(f"{TREE_NODE}:has(.du-bois-light-tree-switcher_close)")
    for title in closed.locator(".du-bois-light-tree-title").all_inner_texts():
        expand(page, title)
    for title in MODEL_METRICS:
        node = tree_node(page, title)
        if not node.count():
            raise SystemExit(f"the Columns menu has no column {title}")
        set_checked(node, True)
    page.keyboard.press("Escape")
    page.locator("h2, h1").filter(has_text=re.compile("^Models$")).first.click()  # closes the menu


def models_tab(page: Page, base: str, experiment: str, models: list[dict], out: Path) -> None:
    """Each logged model, named after its family, with the metrics evaluate linked to it."""
    page.goto(f"{base}/#/experiments/{experiment}/models?{VIEW}")
    page.locator(".ag-center-cols-container .ag-row").nth(len(models) - 1).wait_for()
    page.wait_for_timeout(1000)
    make_room(page)
    choose_model_columns(page)
    page.wait_for_timeout(2000)
    text = page.evaluate("document.body.innerText")
    for model in models:
        values = metrics_of(model)
        if model["info"]["name"] not in text:
            raise SystemExit(f"the Models tab does not show the model {model['info']['name']}")
        for metric in MODEL_METRICS:
            if metric not in text or repr(values[metric]) not in text:
                raise SystemExit(f"the Models tab does not show {metric} = {values[metric]} "
                                 f"of logged model {model['info']['model_id']}")
    save(page, out, (page.evaluate(TABLE_BOTTOM) or 0) + 24)


def version_page(page: Page, base: str, version: str, out: Path) -> None:
    """The registered version: its description lists the inputs its signature cannot."""
    page.goto(f"{base}/#/models/{REGISTERED}/versions/{version}?{VIEW}")
    inputs = page.get_by_role("heading", name="Inputs", exact=True)
    inputs.wait_for()
    text = page.evaluate("document.body.innerText")
    missing = [field for field in INPUTS if not re.search(rf"(?m)^{field}\s", text)]
    if missing:
        raise SystemExit(f"the version page lists no input {', '.join(missing)}")
    make_room(page)
    page.wait_for_timeout(1000)
    save(page, out)


# --------------------------------------------------------------------------- main


def screenshots(executable: str, base: str, address: str, out: Path, width: int, height: int,
                timeout: float) -> None:
    experiment = re.search(r"#/experiments/(\d+)/", address).group(1)
    runs = main_runs(base, experiment)
    models = logged_models(base, experiment)
    champion = api(base, f"/api/2.0/mlflow/registered-models/alias?name={REGISTERED}&alias=champion")
    log(f"experiment {experiment}: {len(runs)} main run(s), {len(models)} logged model(s), "
        f"champion v{champion['model_version']['version']}")
    with chromium(executable) as browser:
        runs_table(fresh_page(browser, width, height, timeout), address, runs, out / "ui-runs.png")
        run_page(fresh_page(browser, width, height, timeout), base, experiment, runs[-1], out / "ui-run.png")
        card_page(fresh_page(browser, width, height, timeout), base, experiment, runs[-1], "evaluate",
                  out / "ui-card.png")
        models_tab(fresh_page(browser, width, height, timeout), base, experiment, models, out / "models-tab.png")
        version_page(fresh_page(browser, width, round(height * 1.6), timeout), base,
                     champion["model_version"]["version"], out / "ui-version.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every steps.main")
    parser.add_argument("--models", default="logreg,random_forest",
                        help="one steps.main per model (conf/model), each logging a model; the first is photographed")
    parser.add_argument("-o", "--output", type=Path, default=PROJECT_ROOT / "docs", help="folder of the PNGs")
    parser.add_argument("--tracking-uri", help="photograph this store instead of running the pipeline")
    parser.add_argument("--width", type=int, default=1600, help="width of the PNGs in pixels")
    parser.add_argument("--height", type=int, default=900, help="viewport height in pixels")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a page to render")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser executable")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (store, logs)")
    args = parser.parse_args()

    started = time.monotonic()
    with scratch("ui-screens-", args.keep) as (tmp, env):
        tracking_uri = args.tracking_uri
        if not tracking_uri:
            tracking_uri = use_fresh_store(tmp, env)
            for number, model in enumerate(args.models.split(","), 1):
                run_command("steps.main", [f"model={model}", *args.overrides], tmp, env, f"main-{number}.log")
        ui, base, address = start_project_ui(tracking_uri, tmp, env)
        try:
            screenshots(args.chromium, base, address, args.output.resolve(), args.width, args.height, args.timeout)
        finally:
            stop(ui)
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
