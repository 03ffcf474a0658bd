"""The web page end to end: a real `sweetspot serve` process driven by headless Chromium.

Debian's ``chromium`` (``scripts/install-browser.sh``) is driven through Python Playwright with
``executable_path``; Playwright's own browser download is never used. Each test saves a
screenshot of its page into ``build/screenshots/`` (or ``$SWEETSPOT_SCREENSHOTS``; the README
shows the copies in ``docs/screenshots/``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="Python Playwright is not installed (pip install playwright)"
)
expect = playwright_api.expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed: run scripts/install-browser.sh",
                allow_module_level=True)  # fmt: skip

BIN = Path(sys.executable).parent
# Screenshots go to build/screenshots (ignored); SWEETSPOT_SCREENSHOTS=docs/screenshots refreshes
# the ones the README shows.
SHOTS = Path(os.environ.get("SWEETSPOT_SCREENSHOTS")
             or Path(__file__).resolve().parents[1] / "build" / "screenshots")  # fmt: skip
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TINY = {"dense_epochs": 1, "prune_epochs": 1, "finetune_epochs": 1, "threads": 1}
JOB_TIMEOUT_MS = 180_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`sweetspot serve --workers 1` on a free port with its own data and profile folders."""

    def __init__(self, root: Path, tokens: str = ""):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SWEETSPOT_DATA_DIR": str(root / "data"),
               "SWEETSPOT_PROFILE_DIR": str(root / "profiles"), "SWEETSPOT_API_TOKENS": tokens,
               "SWEETSPOT_HEARTBEAT_S": "0.3", "SWEETSPOT_STALE_AFTER_S": "5",
               "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self.process = subprocess.Popen(
            [str(BIN / "sweetspot"), "serve", "--port", str(self.port), "--workers", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"sweetspot serve exited with {self.process.returncode}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("sweetspot serve did not become healthy in 90 s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("web"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser context per test; a JavaScript error anywhere fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(30_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _shot(page, name: str, full_page: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def _predict(page, model: str, hardware: str, compare: str = "") -> None:
    page.get_by_label("Built-in network").select_option(model)
    page.get_by_label("Hardware profile").select_option(hardware)
    page.get_by_label("Compare with").select_option(compare)
    page.get_by_role("button", name="Predict").click()


def _wait_for_job(page, status: str = "succeeded") -> None:
    expect(page.locator("#job-status")).to_have_text(status, timeout=JOB_TIMEOUT_MS)


# ------------------------------------------------------------------------------ explorer


def test_explorer_shows_googlenet_sweet_spots_on_xeon(page, server):
    page.goto(f"{server.url}/#/explorer")
    expect(page.get_by_role("heading", name="Sweet spots", exact=True)).to_be_visible()
    _predict(page, "googlenet", "xeon-e5-2697v4")

    reduce_row = page.locator('tr[data-layer="inception_4a.5x5_reduce"]')
    expect(reduce_row.locator('[data-col="sweet-spot-0"]')).to_have_text("none")
    expect(reduce_row.locator('[data-col="plan-0"]')).to_contain_text("dense")
    expect(reduce_row.locator('[data-col="bound-0"]')).to_have_text("memory")
    conv3x3 = page.locator('tr[data-layer="inception_4a.3x3"]')
    expect(conv3x3.locator('[data-col="sweet-spot-0"]')).to_have_text(
        re.compile(r"^\d+\.\d–\d+\.\d%$"))  # fmt: skip
    expect(conv3x3.locator('[data-col="plan-0"]')).to_contain_text("sparse")
    assert "hardware=xeon-e5-2697v4" in page.url and "model=googlenet" in page.url

    # Keyboard: the layer's button opens its large chart and moves focus to it.
    conv3x3.get_by_role("button").focus()
    page.keyboard.press("Enter")
    detail = page.locator("#ex-detail-title")
    expect(detail).to_have_text("inception_4a.3x3")
    expect(detail).to_be_focused()
    expect(page.locator(".detail svg.chart rect.band")).to_have_count(1)

    # Side by side with a second profile.
    _predict(page, "googlenet", "xeon-e5-2697v4", compare="atom-c2750")
    expect(page.locator("th.group")).to_have_text(["xeon-e5-2697v4", "atom-c2750"])
    expect(reduce_row.locator('[data-col="sweet-spot-1"]')).to_have_text(
        re.compile(r"^\d+\.\d–\d+\.\d%$|^none$"))  # fmt: skip
    page.get_by_label("Filter layers").fill("inception_4a.")
    expect(page.locator("tbody tr[data-layer]:visible")).to_have_count(6)
    conv3x3.get_by_role("button").click()
    _shot(page, "explorer", full_page=True)

    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("hardware,batch,layer,layer_batch,kind,shape,flops")
    api = httpx.get(f"{server.url}/v1/sweet-spots",
                    params={"model": "googlenet", "hardware": "xeon-e5-2697v4"}).json()  # fmt: skip
    assert len(lines) == 1 + 2 * len(api["layers"])
    with page.expect_download() as download:
        page.get_by_role("button", name="Export JSON").click()
    exported = json.loads(Path(download.value.path()).read_text())
    assert [p["hardware"] for p in exported] == ["xeon-e5-2697v4", "atom-c2750"]
    assert exported[0] == api


def test_curve_drawn_by_the_page_passes_through_the_api_points(page, server):
    """The page computes the curve from the paper's formulas; the API's sampled speedups
    must lie on it."""
    page.goto(f"{server.url}/#/hardware")
    worst = page.evaluate("""async () => {
        const { paperSpeedup } = await import("/web/js/perfmodel.js");
        let worst = 0;
        for (const hw of ["xeon-e5-2697v4", "atom-c2750", "xeon-phi-7250"]) {
          const profile = await (await fetch(`/v1/hardware/${hw}`)).json();
          const p = await (await fetch(`/v1/sweet-spots?model=googlenet&hardware=${hw}&batch=4`))
            .json();
          for (const layer of p.layers) {
            for (const [s, v] of Object.entries(layer.speedup)) {
              const mine = paperSpeedup(layer, profile, Number(s));
              worst = Math.max(worst, Math.abs(mine - v) / v);
            }
          }
        }
        return worst;
    }""")
    assert worst < 1e-9


def test_csv_export_has_each_layers_own_batch(page, server):
    """The CSV gave only the network's batch: a linear layer on (50, 64) examples runs 50 rows
    per example, which it did not show."""
    page.goto(f"{server.url}/#/hardware")
    header, row = page.evaluate("""async () => {
        const { toCsv } = await import("/web/js/explorer.js");
        const layers = [{ kind: "linear", name: "fc", in_features: 64, out_features: 32,
                          per_example: 50 }];
        const p = await (await fetch("/v1/sweet-spots", { method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ hardware: "atom-c2750", layers, batch: 4 }) })).json();
        return toCsv([p]).trim().split("\\n");
    }""")
    columns = header.split(",")
    values = dict(zip(columns, row.split(","), strict=False))
    assert (values["batch"], values["layer_batch"]) == ("4", "200")


# ---------------------------------------------------------------------------------- jobs


def test_job_submitted_on_the_page_runs_to_success(page, server):
    page.goto(f"{server.url}/#/jobs")
    expect(page.get_by_text("No jobs yet")).to_be_visible()
    page.get_by_label("Method", exact=True).select_option("gsl")
    page.get_by_label("Model", exact=True).select_option("lenet5")
    page.get_by_label("Data set", exact=True).select_option("synthetic")
    for name, value in TINY.items():
        page.get_by_label(name, exact=True).fill(str(value))
    page.get_by_label("measure the pruned model").uncheck()
    page.get_by_role("button", name="Submit job").click()

    expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", name=f"Job {job_id}")).to_be_focused()
    _wait_for_job(page)
    submitted = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()["request"]
    assert submitted["config"] == TINY and submitted["measure"] is False

    # Live charts, decisions with reasons, predicted against measured speedup.
    expect(page.locator("figure.chart-box")).to_have_count(3)
    expect(page.locator("figure.chart-box svg path.line").first).to_be_visible()
    conv2 = page.locator('table.decisions tr[data-layer="conv2"]').first
    expect(conv2).to_contain_text("prune")
    expect(conv2).to_contain_text("sweet spot")
    expect(page.locator('table.result tr[data-layer="conv2"]')).to_be_visible()
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    expect(page.locator("#job-result + p")).to_contain_text("not measured (not asked for")

    manifest_link = page.locator('a[data-artifact="manifest.json"]')
    with page.expect_download() as download:
        manifest_link.click()
    manifest = json.loads(Path(download.value.path()).read_text())
    assert manifest["model"] == "lenet5" and manifest["dataset"] == "synthetic"
    fetched = httpx.get(server.url + manifest_link.get_attribute("href"))
    assert fetched.status_code == 200 and fetched.json() == manifest
    _shot(page, "job", full_page=True)

    page.get_by_role("link", name="← all jobs").click()
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("100%")
    _shot(page, "jobs")


# -------------------------------------------------------------------------------- errors


def test_bad_inputs_show_the_api_message(page, server):
    page.goto(f"{server.url}/#/explorer")
    page.get_by_label("ONNX upload").check()
    garbage = b"this is not an ONNX model"
    page.get_by_label("ONNX file").set_input_files(
        {"name": "broken.onnx", "mimeType": "application/octet-stream", "buffer": garbage}
    )
    page.get_by_role("button", name="Predict").click()
    detail = httpx.post(f"{server.url}/v1/sweet-spots/onnx", data={"hardware": "atom-c2750"},
                        files={"file": ("broken.onnx", garbage)}).json()["detail"]  # fmt: skip
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Error 422")
    expect(alert).to_contain_text(detail)

    page.goto(f"{server.url}/#/explorer?model=alexnet&hardware=no-such-box")
    expect(page.get_by_role("alert")).to_contain_text("unknown hardware profile 'no-such-box'")
    expect(page.get_by_role("alert")).to_contain_text("xeon-e5-2697v4")

    page.goto(f"{server.url}/#/hardware")
    table = page.locator("table.profiles")
    expect(table.locator("tr[data-profile]")).to_have_count(3)
    expect(table.locator('tr[data-profile="xeon-e5-2697v4"]')).to_contain_text("Table 1")
    page.get_by_label("Name", exact=True).fill("xeon-e5-2697v4")
    page.get_by_label("F: dense compute (GFLOP/s)").fill("100")
    page.get_by_label("B: memory bandwidth (GB/s)").fill("20")
    page.get_by_label("Source of the numbers").fill("a test")
    page.get_by_role("button", name="Create profile").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "a built-in profile named 'xeon-e5-2697v4' already exists")  # fmt: skip
    expect(page.get_by_label("Name", exact=True)).to_be_focused()

    page.get_by_label("Name", exact=True).fill("lab-box")
    page.get_by_role("button", name="Create profile").click()
    expect(table.locator('tr[data-profile="lab-box"]')).to_contain_text("a test")
    expect(page.get_by_role("alert")).to_be_hidden()
    _shot(page, "hardware")

    # A custom profile can be deleted from the page; the shipped ones offer no button.
    expect(table.locator('tr[data-profile="xeon-e5-2697v4"] button')).to_have_count(0)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="delete lab-box").click()
    expect(table.locator('tr[data-profile="lab-box"]')).to_have_count(0)
    assert httpx.get(f"{server.url}/v1/hardware/lab-box").status_code == 404


# ------------------------------------------------------------------------------- tokens


def test_token_protected_service_with_polled_events(page, tmp_path):
    """With tokens configured the page asks for one, sends it, and follows a job by polling
    (EventSource cannot send the header); downloads go through fetch with the header."""
    secured = Server(tmp_path, tokens="s3cret")
    try:
        page.goto(f"{secured.url}/#/jobs")
        expect(page.get_by_role("alert").first).to_contain_text("a valid API token is required")
        page.locator("#token-box summary").click()
        page.get_by_label("Bearer token").fill("s3cret")
        page.get_by_label("Bearer token").press("Enter")
        expect(page.locator("#token-state")).to_have_text("(set)")
        expect(page.get_by_text("No jobs yet")).to_be_visible()

        body = {"model": "lenet5", "dataset": "synthetic", "config": TINY, "measure": False}
        job = httpx.post(f"{secured.url}/v1/jobs", json=body,
                         headers={"Authorization": "Bearer s3cret"}).json()  # fmt: skip
        page.goto(f"{secured.url}/#/jobs/{job['id']}")
        _wait_for_job(page)
        first_decision = page.locator('table.decisions tr[data-layer="conv2"]').first
        expect(first_decision).to_contain_text("prune")
        with page.expect_download() as download:
            page.locator('a[data-artifact="manifest.json"]').click()
        assert json.loads(Path(download.value.path()).read_text())["model"] == "lenet5"
    finally:
        secured.stop()
