"""``nst-jax serve`` end to end: the server as a subprocess (the real command), its page driven in a headless
Chromium with Playwright: uploads, options, the live image, a second start, Stop, the downloaded PNG and its
metadata, and bad uploads shown as one line on the page.

The browser is the system's Chromium (``apt-get install chromium``): Playwright's own download of it needs
internet access that CI may not have. Without a Chromium executable these tests skip, saying so.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

for _module in ("starlette", "uvicorn", "python_multipart"):
    pytest.importorskip(_module, reason=f"the web extra is not installed ({_module}): pip install -e '.[web]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ROOT / "examples" / "tubingen.jpg"  # 512x384 (WxH)
STYLE = ROOT / "examples" / "starry_night.jpg"
# Every run of the server: random weights and shallow layers keep its one-time compilation short.
SERVER_SETTINGS = ["--weights", "random", "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1"]
SCREENSHOT = Path(tempfile.gettempdir()) / "web_running.png"


def chromium_executable() -> str | None:
    """The system's Chromium (or Chrome), or Playwright's own if it was installed (``playwright install``)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    try:
        with sync_api.sync_playwright() as p:
            own = p.chromium.executable_path
    except Exception:  # noqa: BLE001 - no driver or no browser: nothing to use
        return None
    return own if own and Path(own).is_file() else None


@pytest.fixture(scope="module")
def server():
    """``python -m nst_jax serve --port 0`` (a free port) on 127.0.0.1; yields the page's URL."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "nst_jax", "serve", "--port", "0", *SERVER_SETTINGS],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, url, deadline = [], None, time.monotonic() + 120
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            continue
        if m := re.search(r"open (http://\S+/) in a browser", seen[-1]):
            url = m.group(1)
    if url is None:
        proc.kill()
        pytest.fail("nst-jax serve did not start:\n" + "".join(seen))
    yield url
    proc.terminate()
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 128 + 15, "".join(seen)  # SIGTERM stops it as Ctrl-C does (removing its temporary files)


@pytest.fixture(scope="module")
def browser():
    exe = chromium_executable()
    if exe is None:
        pytest.skip("no Chromium executable found (install it with: apt-get install chromium); Playwright's own "
                    "browser download needs internet access, so the browser tests cannot run here")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 760})
    pg = context.new_page()
    pg.goto(server)
    pg.wait_for_selector("#opt-num_iterations")  # the options come from the server (GET options)
    yield pg
    context.close()


def fill(page, content=CONTENT, style=STYLE, size=64, iterations=20):
    page.set_input_files("#content", str(content))
    page.set_input_files("#style", str(style))
    page.fill("#opt-image_size", str(size))
    page.fill("#opt-num_iterations", str(iterations))


def wait_until_idle(page, timeout=120):
    """Waits until the page shows a finished, stopped or failed run; returns the status text."""
    page.wait_for_function("() => /^(Done|Stopped|The run failed)/.test(document.getElementById('state')"
                           ".textContent)", timeout=timeout * 1000)
    return page.inner_text("#state")


def png_of(page, url: str) -> np.ndarray:
    response = page.request.get(url)
    assert response.ok, url
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def test_run_shows_the_image_changing_and_downloads_a_png_with_metadata(page, server, tmp_path):
    fill(page)
    assert page.get_attribute("#content-thumb", "src").startswith("blob:")  # thumbnails of the chosen files
    assert page.get_attribute("#style-thumb", "src").startswith("blob:")
    page.click("#start")
    page.wait_for_function("() => /^(Preparing|Iteration)/.test(document.getElementById('state').textContent)")

    # A second start while this one runs: a clear message, the run goes on.
    status, error = page.evaluate("async () => { const r = await fetch('run', {method: 'POST', body: formData()});"
                                  " return [r.status, (await r.json()).error]; }")
    assert status == 409 and "already running" in error and "Stop" in error

    sources, screenshots = [], 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        src = page.get_attribute("#live", "src")
        state = page.inner_text("#state")
        if src and (not sources or sources[-1] != src):
            sources.append(src)
            # a look at the page during the run: at the first image, then once more after a few iterations
            if state.startswith("Iteration") and (screenshots == 0 or (screenshots == 1 and len(sources) >= 3)):
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                screenshots += 1
        if state.startswith(("Done", "The run failed")):
            break
        time.sleep(0.05)
    if (src := page.get_attribute("#live", "src")) and src not in sources[-1:]:  # shown between the reads above
        sources.append(src)
    assert page.inner_text("#error") == ""
    assert page.inner_text("#state").startswith("Done: 20 iterations"), page.inner_text("#state")
    assert len(sources) >= 2, f"the live image never changed: {sources}"  # iteration 0, ..., the final one
    assert "content" in page.inner_text("#losses") and "style" in page.inner_text("#losses")

    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == "tubingen_starry_night.png"
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (64, 48)  # 512x384 content, long side 64
        meta = json.loads(img.text["nst_jax"])
        pixels = np.asarray(img.convert("RGB"))
    s = meta["settings"]
    assert (s["image_size"], s["num_iterations"], s["weights"]) == (64, 20, "random")
    assert s["content_layers"] == ["relu2_1"]  # the server's own settings flags apply to every run
    assert meta["weights"]["source"] == "random"
    # the last image shown is the result, pixel for pixel
    np.testing.assert_array_equal(png_of(page, server + sources[-1]), pixels)


def test_stop_keeps_the_image_so_far(page):
    fill(page, iterations=100000)
    page.click("#start")
    page.wait_for_function("() => document.getElementById('state').textContent.startsWith('Iteration')",
                           timeout=120_000)
    page.click("#stop")
    text = wait_until_idle(page)
    m = re.fullmatch(r"Stopped at iteration (\d+) of 100000\.", text)
    assert m and 0 <= int(m.group(1)) < 100000, text
    assert page.inner_text("#download") == "Download the image so far (PNG)"
    with page.expect_download() as info:
        page.click("#download")
    with Image.open(info.value.path()) as img:
        meta = json.loads(img.text["nst_jax"])
    assert meta["partial"] is True and meta["iteration"] == int(m.group(1))


@pytest.mark.parametrize("case", ["text", "tiny", "size"])
def test_bad_input_shows_the_one_line_error_on_the_page(page, tmp_path, case):
    content, size = CONTENT, 64
    if case == "text":
        content = tmp_path / "notes.jpg"
        content.write_text("not a picture\n")
    elif case == "tiny":
        content = tmp_path / "tiny.png"
        Image.new("RGB", (12, 10), "red").save(content)
    else:
        size = 8
    fill(page, content=content, size=size)
    page.click("#start")
    page.wait_for_function("() => document.getElementById('error').textContent !== ''")
    error = page.inner_text("#error")
    assert "\n" not in error and "Traceback" not in error and tempfile.gettempdir() not in error, error
    expected = {"text": r"^content image 'notes\.jpg' is not an image .*text file",
                "tiny": r"^content image 'tiny\.png' is 10x12 pixels \(HxW\), too small.* at least 16 pixels",
                "size": r"^Image size \(long side, px\) must be an integer >= 32, got 8\.$"}[case]
    assert re.search(expected, error), error
    assert not page.is_disabled("#start")  # nothing started: the page can be corrected and started again


# --------------------------------------------------------------------------------------------------
# Without the browser: the form's settings and the server's start


def test_settings_from_form_applies_the_page_options_on_the_server_settings():
    from nst_jax import web
    from nst_jax.config import Settings

    base = Settings(weights="random", content_layers=("relu2_1",))
    form = {"image_size": "96", "num_iterations": "300", "style_weight": "1e3", "content_weight": "2.5",
            "tv_weight": "0", "optimizer": "adam", "style_loss": "w2", "init": "content",
            "original_colors": "true"}
    s = web.settings_from_form(form, base)
    assert (s.image_size, s.num_iterations, s.style_weight, s.content_weight, s.tv_weight) == (96, 300, 1000.0, 2.5,
                                                                                                 0.0)
    assert (s.optimizer, s.style_loss, s.init, s.original_colors) == ("adam", "w2", "content", True)
    assert (s.weights, s.content_layers) == ("random", ("relu2_1",))  # the rest: the server's settings
    assert s.print_every == 10  # 300 iterations: an image every 10 (at most 10 apart, about 20 per run)
    assert web.settings_from_form({**form, "num_iterations": "20", "original_colors": "false"}, base).print_every == 1
    assert web.settings_from_form({**form, "original_colors": "false"}, base).original_colors is False
    assert not web.settings_from_form({k: v for k, v in form.items() if k != "original_colors"}).original_colors
    # the page's defaults are the server's settings
    defaults = {o["name"]: o["default"] for o in web.options(base.replace(image_size=256))}
    assert defaults["image_size"] == 256 and defaults["num_iterations"] == Settings().num_iterations


@pytest.mark.parametrize("field, value, message", [
    ("image_size", "", "Image size (long side, px) is empty: enter a value (default: 512)."),
    ("image_size", "12.5", "Image size (long side, px) must be a whole number, got '12.5'."),
    ("style_weight", "lots", "Style weight must be a number, got 'lots'."),
    ("tv_weight", "-1", "TV weight must be a finite number >= 0, got -1.0."),
    ("optimizer", "sgd", "Optimizer must be one of 'lbfgs', 'adam'; got 'sgd'."),
])
def test_bad_form_values_name_the_field_by_its_label(field, value, message):
    from nst_jax import web
    from nst_jax.config import SettingError

    form = {o["name"]: str(o["default"]) for o in web.options()}
    with pytest.raises(SettingError) as e:
        web.settings_from_form({**form, field: value})
    assert web.error_text(e.value) == message


def test_serve_refuses_a_port_in_use_and_snapshots_in_one_line(capsys):
    import socket

    from nst_jax import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            cli.main(["serve", "--port", str(port), "--weights", "random"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"nst-jax serve: error: cannot listen on 127.0.0.1 port {port} (Address already in use): pass another port "
        f"(--port), or stop the program that uses it."]
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--port", "0", "--weights", "random", "--save-every", "5"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "nst-jax serve: error: --save-every 5: the page does not write snapshots; leave --save-every at 0."]
