"""Screenshot of a sweep comparison in the real `mlflow ui`, for the README (docs/sweep-compare.png).

    .venv/bin/pip install -r requirements-docs.txt     # Playwright, into the project's venv
    apt-get install -y chromium                         # the browser it drives (no `playwright install`)
    .venv/bin/python scripts/screenshot_compare.py     # [hydra overrides] [--tracking-uri URI] [-o OUT]

In a temp folder (nothing lands in the project): a sweep into a fresh SQLite store (data:
HEART_DISEASE_DATA_URL, default tests/data/processed.cleveland.data), `mlflow ui` on it, and its
Compare page for the sweep's trial runs in headless Chromium. `--tracking-uri` skips the sweep.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.parse
from pathlib import Path

from playwright.sync_api import Browser, Page
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

DEFAULT_OVERRIDES = ["search=hist_gradient_boosting", "hydra.sweeper.n_trials=8"]
TAG_ROLE = "pipeline.role"  # engine/names.py ROLE: main | sweep | trial


def find_trials(base: str, parent: str | None) -> tuple[str, dict, list[dict]]:
    """The sweep run (the given one, or the latest) and its finished trial runs, via the REST API."""
    experiment = experiment_id(base)

    def search(filter_string: str, max_results: int) -> list[dict]:
        return api(base, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment], "filter": filter_string, "max_results": max_results,
            "order_by": ["attributes.start_time DESC"]}).get("runs", [])

    sweeps = search(f"attributes.run_id = '{parent}'" if parent else f"tags.`{TAG_ROLE}` = 'sweep'", 1)
    if not sweeps:
        raise SystemExit(f"no sweep run (tag {TAG_ROLE}=sweep) in experiment {experiment}")
    sweep = sweeps[0]
    trials = search(f"tags.`mlflow.parentRunId` = '{sweep['info']['run_id']}' "
                    f"and tags.`{TAG_ROLE}` = 'trial' and attributes.status = 'FINISHED'", 1000)
    if not trials:
        raise SystemExit(f"sweep run {sweep['info']['run_id']} has no finished trial runs")
    return experiment, sweep, trials


def json_query(value: list[str]) -> str:
    return urllib.parse.quote(json.dumps(value, separators=(",", ":")), safe="")


def sort_trials(trials: list[dict]) -> list[dict]:
    """By the values of the params the trials differ in (numbers as numbers), then oldest first."""
    params = [{p["key"]: p["value"] for p in run["data"].get("params", [])} for run in trials]
    swept = sorted({key for p in params for key in p if len({q.get(key) for q in params}) > 1})

    def value(text):
        try:
            return (0, float(text), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(text))

    order = sorted(range(len(trials)), key=lambda i: (
        [value(params[i].get(key)) for key in swept], trials[i]["info"]["start_time"]))
    return [trials[i] for i in order]


# ----------------------------------------------------------------- the screenshot

# Rendered for real: the plot is drawn, every trial's name and the colour metric are on the
# page, and no spinner is left (the tables fill in after the plot).
READY = """([names, metrics]) => {
  const text = document.body ? document.body.innerText : "";
  return !!document.querySelector(".pcp-plot .parcoords") && names.every(name => text.includes(name))
    && text.includes(metrics[metrics.length - 1])
    && !document.querySelector("[class*='spin'][class*='spinning'], [data-testid*='spinner']");
}"""
# Horizontal overflow of the comparison tables (200 px per run): widen the layout by that much.
OVERFLOW = """() => Math.max(0, ...[...document.querySelectorAll("table.mlflow-compare-table, .ReactVirtualized__Grid")]
  .map(e => e.scrollWidth - e.clientWidth))"""
# Bottom of the section titled `title` (null: the last one, Tags), in page coordinates. The page
# does not scroll itself (an inner panel does), so this is measured in a viewport tall enough.
SECTION_BOTTOM = """(title) => {
  const items = [...document.querySelectorAll(".du-bois-light-collapse-item")];
  const item = title ? items.find(i => (i.querySelector(".du-bois-light-collapse-header") || {}).innerText === title)
                     : items[items.length - 1];
  return item ? Math.ceil(item.getBoundingClientRect().bottom) : null;
}"""
SCROLL_TOP = """() => { [...document.querySelectorAll("*")].forEach(e => { if (e.scrollTop) e.scrollTop = 0; });
  window.scrollTo(0, 0); }"""
TALL = 4000  # viewport height that holds every section: nothing scrolls, clicks need no scrolling


def choose_plot_metrics(page: Page, metrics: list[str]) -> None:
    """The parallel coordinates plot starts with the trials' first metric only; the last
    axis colours the lines, so the sweep metric goes last."""
    select = page.locator(".du-bois-light-select").nth(1)  # [parameters, metrics]
    remove = select.locator(".du-bois-light-select-selection-item-remove")
    while remove.count():
        remove.first.click()
    # Locator clicks are real mouse events: rc-select opens and picks on mousedown.
    select.locator(".du-bois-light-select-selector").click()
    for metric in metrics:
        page.locator(".du-bois-light-select-item-option").filter(
            has_text=re.compile(f"^{re.escape(metric)}$")).click()
    page.locator("h1, h2").filter(has_text=re.compile("^Comparing")).click()  # closes the drop-down


def wait_rendered(page: Page, names: list[str], metrics: list[str]) -> None:
    page.wait_for_function(READY, arg=[names, metrics], polling=500)


def open_compare_page(browser: Browser, url: str, width: int, scale: float,
                      names: list[str], metrics: list[str], timeout: float) -> Page:
    """The compare page, rendered, with room for the comparison and the plot's axes chosen."""
    page = browser.new_page(viewport={"width": width, "height": TALL}, device_scale_factor=scale)
    page.set_default_timeout(timeout * 1000)
    page.goto(url)
    wait_rendered(page, names, metrics)
    page.wait_for_timeout(1000)
    make_room(page)
    # Only the swept params: then the Metrics table fits in the picture too.
    page.locator('[aria-label="Parameters - Show diff only"]').click()
    choose_plot_metrics(page, metrics)
    return page


def screenshot(executable: str, url: str, out: Path, width: int, names: list[str], metrics: list[str],
               settle: float, timeout: float, full_page: bool) -> None:
    with chromium(executable) as browser:
        log(f"open {url}")
        page = open_compare_page(browser, url, width, 1, names, metrics, timeout)
        # Every trial's column in view: find how wide the layout must be, then lay the page out
        # that wide at a device scale factor that brings the picture back to `width` pixels.
        # Chromium then draws the text at that size: crisper, and half the bytes of a resized image.
        layout_width = width
        for _ in range(3):
            overflow = int(page.evaluate(OVERFLOW))
            if overflow <= 0:
                break
            layout_width += overflow
            page.set_viewport_size({"width": layout_width, "height": TALL})
            page.wait_for_timeout(1000)
        if layout_width != width:
            page.close()
            page = open_compare_page(browser, url, layout_width, width / layout_width, names, metrics, timeout)
            if page.evaluate(OVERFLOW) > 0:
                log("warning: the tables still overflow; the last trial columns are cut")
        page.evaluate(SCROLL_TOP)
        page.wait_for_timeout(settle * 1000)  # plotly re-lays out after each resize
        bottom = page.evaluate(SECTION_BOTTOM, None if full_page else "Metrics")
        if not bottom or bottom > TALL - 200:
            raise SystemExit(f"compare page: the sections end at {bottom}, not inside the {TALL} px viewport")
        bottom += 16
        # A viewport taller than the picture keeps the assistant's floating button out of it.
        page.set_viewport_size({"width": layout_width, "height": bottom + 200})
        page.wait_for_timeout(1500)
        wait_rendered(page, names, metrics)
        page.evaluate(SCROLL_TOP)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=out, clip={"x": 0, "y": 0, "width": layout_width, "height": bottom})
    log(f"page laid out {layout_width}x{bottom} CSS px, saved at scale {width / layout_width:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*",
                        help=f"Hydra overrides for tools.sweep (default: {' '.join(DEFAULT_OVERRIDES)})")
    parser.add_argument("-o", "--output", type=Path, default=PROJECT_ROOT / "docs" / "sweep-compare.png")
    parser.add_argument("--tracking-uri", help="use this store's latest sweep instead of running one")
    parser.add_argument("--parent", help="the sweep run id (default: the latest sweep run)")
    parser.add_argument("--width", type=int, default=1600, help="width of the PNG in pixels")
    parser.add_argument("--metrics", default="test_roc_auc,cv_roc_auc_mean",
                        help="metric axes of the parallel coordinates plot; the last one colours the lines")
    parser.add_argument("--full-page", action="store_true", help="the whole page (default: down to the metrics table)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the page looks ready")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the page to render")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser executable")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (store, logs)")
    args = parser.parse_args()

    started = time.monotonic()
    with scratch("sweep-compare-", args.keep) as (tmp, env):
        tracking_uri = args.tracking_uri
        if not tracking_uri:
            tracking_uri = use_fresh_store(tmp, env)
            run_command("tools.sweep", args.overrides or DEFAULT_OVERRIDES, tmp, env, "sweep.log")
        with running_ui(tracking_uri, tmp, env) as base:
            experiment, sweep, trials = find_trials(base, args.parent)
            trials = sort_trials(trials)
            names = [run["info"]["run_name"] for run in trials]
            log(f"sweep run {sweep['info']['run_id']}: {len(trials)} trials: {', '.join(names)}")
            # What "tick the trial runs, Compare" opens.
            runs = [run["info"]["run_id"] for run in trials]
            url = f"{base}/#/compare-runs?runs={json_query(runs)}&experiments={json_query([experiment])}"
            screenshot(args.chromium, url, args.output.resolve(), args.width, names, args.metrics.split(","),
                       args.settle, args.timeout, args.full_page)
    log(f"saved {args.output} ({args.output.stat().st_size / 1024:.0f} KB) in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
