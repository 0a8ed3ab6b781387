"""The kit's real front end: notebooks 00 and 05 run in JupyterLab in a headless Chromium, widgets and all.

nbval proves that the cells run; this proves what a reader sees. JupyterLab is started on 127.0.0.1 with a
random free port and a token (``IFKIT_FAST=1``), Debian's Chromium is driven by the ``playwright`` package
(``executable_path``: no browser download), and for each notebook the test runs every cell, then checks:
no error outputs, matplotlib images rendered, ipywidgets controls rendered (and no "Error displaying widget");
in notebook 00 it moves the suspects slider and waits for the widget's image to change; in notebook 01 it does
what a learner does with an exercise: sees "not attempted yet", types an answer into the stub's cell, runs it and
its check, and reads the check's verdict (first a wrong answer, named, then the right one).

Run it with ``make test-browser`` (installs chromium when root, and the ``browser`` extra), which sets
``IFKIT_BROWSER_TEST=1``; a plain ``pytest tests/`` skips it, so the unit tests need no browser.
Screenshots and JupyterLab's log go to ``.browser-test/`` (ignored by git). The notebooks are run from copies
there, so Lab never writes outputs into the committed files.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("IFKIT_BROWSER_TEST") != "1",
    reason="browser test: run `make test-browser` (needs chromium and the `browser` extra)",
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".browser-test"
CHROMIUM = os.environ.get("IFKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
IS_ROOT = hasattr(os, "getuid") and os.getuid() == 0
# Limits for running all cells of one notebook in FAST mode (measured on 2 shared cores: 14-19 s for 00, 30-58 s
# for 05, depending on the load).
RUN_TIMEOUT_S = {"00_quickstart.ipynb": 180, "01_influence_functions_from_scratch.ipynb": 300,
                 "05_mislabel_detection.ipynb": 420}
# Chromium on a closed network: no background connections, no sandbox as root (Chromium refuses otherwise).
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"] + (["--no-sandbox"] if IS_ROOT else [])
# JupyterLab settings for the test's own settings folder: no autosave, every cell in the DOM (no windowing),
# no news or update checks (nothing to fetch offline).
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workspace() -> Path:
    """A fresh copy of notebooks/ under .browser-test/root, with results/ and figures/ linked beside it."""
    root = OUT / "root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "notebooks").mkdir(parents=True)
    for nb in RUN_TIMEOUT_S:
        shutil.copy2(ROOT / "notebooks" / nb, root / "notebooks" / nb)
    for name in ("results", "figures"):
        (root / name).symlink_to(ROOT / name, target_is_directory=True)
    for rel, value in LAB_SETTINGS.items():
        path = OUT / "lab-settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    return root


@pytest.fixture(scope="module")
def lab():
    """A JupyterLab server of our own: yields (base URL, token); stopped by its PID afterwards."""
    OUT.mkdir(exist_ok=True)
    (OUT / "timings.txt").unlink(missing_ok=True)
    root, port, token = _workspace(), _free_port(), secrets.token_hex(16)
    shutil.rmtree(OUT / "workspaces", ignore_errors=True)
    (OUT / "workspaces").mkdir()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={OUT / 'lab-settings'}",
           f"--LabApp.workspaces_dir={OUT / 'workspaces'}"] + (["--allow-root"] if IS_ROOT else [])
    env = dict(os.environ, IFKIT_FAST="1", TQDM_DISABLE="1", JUPYTER_RUNTIME_DIR=str(OUT / "runtime"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the images
    log = open(OUT / "lab.log", "w")  # closed in the finally, after the server
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}; see {OUT / 'lab.log'}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base} within 90 s; see {OUT / 'lab.log'}")
            time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `sudo apt-get install -y chromium` (or set IFKIT_CHROMIUM)")
    from playwright.sync_api import sync_playwright  # the `browser` extra

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# The open notebook panel, through the app object that --LabApp.expose_app_in_browser puts on window.
PANEL = "window.jupyterapp && window.jupyterapp.shell.currentWidget"
START_RUN_ALL = """async () => {
    const panel = window.jupyterapp.shell.currentWidget;
    await panel.context.ready;
    await panel.sessionContext.ready;
    window.__ifkitRun = null;
    window.jupyterapp.commands.execute('notebook:run-all-cells').then(
        ok => { window.__ifkitRun = {ok: ok}; }, err => { window.__ifkitRun = {error: String(err)}; });
    return panel.sessionContext.session.kernel.name;
}"""
# Finished = the run-all promise settled, the kernel is idle, and every code cell ran (or one failed: Lab stops
# there).
RUN_FINISHED = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    if (!window.__ifkitRun || !kernel || kernel.status !== 'idle') return false;
    const cells = panel.content.widgets.filter(c => c.model.type === 'code');
    const failed = cells.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
    return failed || cells.every(c => c.model.executionCount !== null);
}"""
ERRORS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const out = [];
    panel.content.widgets.forEach((c, i) => {
        if (c.model.type !== 'code') return;
        if (c.model.executionCount === null) out.push(`cell ${i} did not run`);
        c.model.outputs.toJSON().forEach(o => {
            if (o.output_type === 'error') out.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
            if (o.output_type === 'stream' && o.name === 'stderr' && String(o.text).includes('Traceback'))
                out.push(`cell ${i}: traceback on stderr: ${String(o.text).slice(-500)}`);
        });
    });
    return out;
}"""


SHUTDOWN = "() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()"  # free the cores for the next


def _run_notebook(page, base: str, token: str, name: str) -> float:
    """Open notebooks/NAME in Lab, run all cells, wait for the kernel to go idle; returns the run's seconds."""
    # A workspace of its own per notebook, so Lab does not reopen (and restart) the other test's notebook.
    page.goto(f"{base}/lab/workspaces/nb{name[:2]}/tree/notebooks/{name}?token={token}")
    page.wait_for_function(f"{PANEL} && {PANEL}.context && {PANEL}.context.path.endsWith({name!r})",
                           timeout=90_000)
    start = time.monotonic()
    kernel = page.evaluate(START_RUN_ALL)
    assert kernel == "python3", kernel
    page.wait_for_function(RUN_FINISHED, timeout=RUN_TIMEOUT_S[name] * 1000, polling=500)
    seconds = time.monotonic() - start
    errors = page.evaluate(ERRORS)
    page.screenshot(path=str(OUT / f"{name[:2]}_after_run.png"))
    assert not errors, f"{name}: " + "; ".join(errors)
    assert page.evaluate("window.__ifkitRun.ok") is True, page.evaluate("window.__ifkitRun")
    # The DOM, as the reader sees it: no rendered traceback, images drawn, widgets alive.
    assert page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"] '
                        ':text("Traceback")').count() == 0
    assert page.locator(".jp-OutputArea-output img").count() > 0, f"{name}: no matplotlib image rendered"
    page.wait_for_selector(".jupyter-widgets.widget-interact", timeout=30_000)
    page.wait_for_function("() => !document.body.innerText.includes('Loading widget')", timeout=30_000)
    body = page.inner_text("body")
    assert "Error displaying widget" not in body and "Error rendering output" not in body, name
    return seconds


def _record(line: str) -> None:
    """Print a timing (visible with -s) and keep it in .browser-test/timings.txt."""
    print(line)
    with open(OUT / "timings.txt", "a") as f:
        f.write(line + "\n")


def _interact_image_src(widget) -> str:
    img = widget.locator(".widget-output img").first
    img.wait_for(timeout=30_000)
    return img.get_attribute("src")


def test_quickstart_widgets_render_and_respond(lab, browser):
    base, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    seconds = _run_notebook(page, base, token, "00_quickstart.ipynb")
    widget = page.locator(".jupyter-widgets.widget-interact").first
    widget.scroll_into_view_if_needed()
    assert widget.locator(".widget-dropdown select").count() == 1
    slider = widget.locator(".widget-slider").first
    assert slider.locator(".widget-readout").inner_text().strip() == "16"
    before = _interact_image_src(widget)
    widget.screenshot(path=str(OUT / "00_widget_before.png"))

    slider.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")  # one step: 16 -> 20 suspects, the grid redraws from cached scores
    page.wait_for_function("() => document.querySelector('.widget-interact .widget-readout').innerText.trim() "
                           "=== '20'", timeout=10_000)
    changed = time.monotonic()
    page.wait_for_function("""before => {
        const img = document.querySelector('.widget-interact .widget-output img');
        return img && img.getAttribute('src') !== before;
    }""", arg=before, timeout=20_000)
    redraw = time.monotonic() - changed
    after = _interact_image_src(widget)
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(OUT / "00_widget_after.png"))
    page.screenshot(path=str(OUT / "00_page.png"))
    assert after != before
    _record(f"00_quickstart: all cells {seconds:.1f} s, slider redraw {redraw:.2f} s")
    page.evaluate(SHUTDOWN)
    page.close()


def test_mislabel_detection_dashboard_renders(lab, browser):
    base, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    seconds = _run_notebook(page, base, token, "05_mislabel_detection.ipynb")
    # the trust report along the checkpoints: a slider whose output is ifkit.diagnose's table; one step left
    # re-diagnoses an earlier checkpoint and the report's text changes
    report = page.locator(".jupyter-widgets.widget-interact").filter(has_text="checkpoint").first
    report.scroll_into_view_if_needed()
    output = report.locator(".widget-output")
    output.get_by_text("ifkit.diagnose(fvm)").wait_for(timeout=30_000)
    before = output.inner_text()
    assert "theta~" in before and "SAM sharpness" in before
    report.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowLeft")
    deadline = time.monotonic() + 60
    while output.inner_text() == before and time.monotonic() < deadline:
        time.sleep(0.25)
    assert output.inner_text() != before, "the checkpoint slider did not change the report"
    report.screenshot(path=str(OUT / "05_checkpoint_report.png"))
    widget = page.locator(".jupyter-widgets.widget-interact").filter(has=page.locator(".widget-dropdown")).first
    widget.scroll_into_view_if_needed()
    assert widget.locator(".widget-dropdown select").count() >= 3  # dataset, noise, method
    assert widget.locator(".widget-slider").count() >= 1  # rate
    _interact_image_src(widget)
    widget.screenshot(path=str(OUT / "05_widget.png"))
    page.screenshot(path=str(OUT / "05_page.png"))
    _record(f"05_mislabel_detection: all cells {seconds:.1f} s")
    page.evaluate(SHUTDOWN)
    page.close()


# A learner's edit: replace the source of the code cell that defines NAME (the exercise stub), run it, then run
# the next cell (its check); returns nothing, the test waits for the check's output.
FIND_STUB = """name => {
    const cells = window.jupyterapp.shell.currentWidget.content.widgets;
    return cells.findIndex(c => c.model.type === 'code' && c.model.sharedModel.getSource().includes(`def ${name}(`)
                                && c.model.sharedModel.getSource().includes('NotImplementedError'));
}"""
TYPE_AND_RUN = """async ({index, source}) => {
    const panel = window.jupyterapp.shell.currentWidget;
    panel.content.widgets[index].model.sharedModel.setSource(source);
    for (const i of [index, index + 1]) {
        panel.content.activeCellIndex = i;
        await window.jupyterapp.commands.execute('notebook:run-cell');
    }
}"""
CHECK_OUTPUT = """index => {
    const cell = window.jupyterapp.shell.currentWidget.content.widgets[index];
    return cell.model.outputs.toJSON().map(o => String(o.text || (o.data && o.data['text/plain']) || '')).join('');
}"""
ANSWER = """from torch.func import grad, vmap


def per_sample_grads(loss_one, theta, X, y):
    return {sign}vmap(grad(loss_one), in_dims=(None, 0, 0))(theta, X, y)
"""


def _check_says(page, index: int, text: str) -> str:
    page.wait_for_function(f"i => ({CHECK_OUTPUT})(i).includes({text!r})", arg=index, timeout=60_000)
    return page.evaluate(CHECK_OUTPUT, index)


def test_learner_attempts_an_exercise(lab, browser):
    base, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    seconds = _run_notebook(page, base, token, "01_influence_functions_from_scratch.ipynb")
    body = page.inner_text("body")
    assert "IFKIT_FAST=1: FAST mode" in body  # the first cell says which mode the learner is in
    stub = page.evaluate(FIND_STUB, "per_sample_grads")
    assert stub >= 0, "no per_sample_grads stub in notebook 01"
    assert "not attempted yet" in _check_says(page, stub + 1, "not attempted yet")

    page.evaluate(TYPE_AND_RUN, {"index": stub, "source": ANSWER.format(sign="-")})
    wrong = _check_says(page, stub + 1, "sign is flipped")
    assert "Traceback" not in wrong and "Hint:" in wrong
    page.evaluate(TYPE_AND_RUN, {"index": stub, "source": ANSWER.format(sign="")})
    right = _check_says(page, stub + 1, "✓ per_sample_grads")
    page.locator(".jp-Notebook .jp-Cell").nth(stub + 1).scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "01_exercise_passed.png"))
    assert "all 3 cases match" in right
    _record(f"01_influence_functions_from_scratch: all cells {seconds:.1f} s, exercise checked twice")
    page.evaluate(SHUTDOWN)
    page.close()
