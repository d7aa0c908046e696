"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium through chromedriver,
loads the page that `python -m monitor --http` serves while a live device streams over a pty."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokers import free_port
from conftest import ROOT, require_tool, start_socat

webdriver = pytest.importorskip("selenium.webdriver")


def chromium(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = require_tool("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(require_tool("chromedriver")))


def open_page(browser, url: str, timeout: float = 30.0) -> None:
    """Load the page once the server listens (the monitor or device needs a moment to start)."""
    from selenium.common.exceptions import WebDriverException

    end = time.monotonic() + timeout
    while True:
        try:
            browser.get(url)
            return
        except WebDriverException:  # connection refused until it listens
            if time.monotonic() > end:
                raise
            time.sleep(0.3)


def test_the_dashboard_updates_live_in_headless_chromium(digits_bundle, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    socat = start_socat(tmp_path)
    port = free_port()
    dev = subprocess.Popen([sys.executable, "-m", "device", "--model", str(digits_bundle), "--source",
                            f"replay:{digits_bundle / 'testset.npz'}?loop=1", "--port", str(tmp_path / "app"),
                            "--period", "0.05", "--duration", "90", "--quiet-status"], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mon = subprocess.Popen([sys.executable, "-m", "monitor", str(tmp_path / "host"), "--http",
                            f"127.0.0.1:{port}", "-q", "--duration", "90"], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    browser = None
    try:
        browser = chromium(tmp_path)
        open_page(browser, f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".card .counter[data-name=predictions]"))

        def text(css: str) -> str:
            # read in the page's own turn: the cards are redrawn four times a second, so an element
            # found first and read after may already be replaced
            return browser.execute_script("const e = document.querySelector(arguments[0]);"
                                          "return e ? e.textContent : null;", css)

        def count(css: str) -> int:
            return browser.execute_script("return document.querySelectorAll(arguments[0]).length;", css)

        def texts(css: str) -> list[str]:
            return browser.execute_script("return Array.from(document.querySelectorAll(arguments[0]),"
                                          " e => e.textContent);", css)

        def predictions() -> int:
            return int(text(".card .counter[data-name=predictions]").split()[-1])

        wait.until(lambda b: predictions() > 0)
        first, labels_seen = predictions(), set()
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and (predictions() < first + 20 or len(labels_seen) < 2):
            labels_seen.add(text(".card .label"))
            time.sleep(0.2)
        assert predictions() >= first + 20  # the page follows the stream without a reload
        assert len(labels_seen - {"-"}) >= 2 and labels_seen <= {str(i) for i in range(10)} | {"-"}
        assert text("#connection") == "live"
        assert 1 <= count(".card .bars .bar") <= 3  # top-k bars (k = 3)
        assert count(".card .strip span") > 5
        stages = texts(".card .latency td:first-child")
        assert {"capture", "preprocess", "invoke", "postprocess", "total"} <= set(stages)
        assert "accuracy" in text(".card .counters")  # frames carry the truth
        points = browser.execute_script("return document.querySelector('.card .minute .score')"
                                        ".getAttribute('points');")
        assert points and len(points.split()) >= 2  # the last minute's top score, one point a second
        # a device that sends no thumbnail shows none (the page once showed a broken-image placeholder)
        assert browser.execute_script("return getComputedStyle(document.querySelector('.card .thumb')).display;") \
            == "none"
        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000
    finally:
        if browser is not None:
            browser.quit()
        for p in (dev, mon):
            p.terminate()
            p.wait(10)
        socat.kill()


def test_the_device_serves_its_own_dashboard_with_a_thumbnail(digits_bundle, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    dev = subprocess.Popen([sys.executable, "-m", "device", "--model", str(digits_bundle), "--source",
                            f"replay:{digits_bundle / 'testset.npz'}?loop=1", "--port", "null", "--period", "0.05",
                            "--duration", "90", "--quiet-status", "--dashboard", f"127.0.0.1:{port}",
                            "--thumbnail-every", "0.3"], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    browser = None
    try:
        browser = chromium(tmp_path)
        open_page(browser, f"http://127.0.0.1:{port}/")
        shown = ("const i = document.querySelector('.card .thumb');"
                 "return i && !i.hidden && i.complete ? [i.naturalWidth, i.getAttribute('src')] : null;")

        def loaded(b):
            # one read: the page replaces the picture every 0.3 s, so a second read may catch the next
            # one still loading (not complete, so null)
            got = b.execute_script(shown)
            return got if got and got[0] > 0 else None

        width, first = WebDriverWait(browser, 30).until(loaded)
        assert width == 160  # the 8x8 digit, enlarged
        WebDriverWait(browser, 10).until(lambda b: (b.execute_script(shown) or [0, first])[1] != first)  # refreshed
        browser.save_screenshot(str(tmp_path / "device-dashboard.png"))
    finally:
        if browser is not None:
            browser.quit()
        dev.terminate()
        dev.wait(10)


def test_the_record_view_records_two_labels_in_headless_chromium(tmp_path):
    """python -m device record --dashboard on a simulated sensor: a label typed, Start with a count, a
    second label until Stop; the counts, the live signal and the dataset build_model reads."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from build_model import datasets
    from sensors import Sensor

    socat = start_socat(tmp_path, "sensor", "reader")
    sensor = Sensor(tmp_path / "sensor")
    port, out = free_port(), tmp_path / "gestures"
    rec = subprocess.Popen([sys.executable, "-m", "device", "record", "--source",
                            f"serial-sensor:{tmp_path / 'reader'}", "--out", str(out), "--window", "25",
                            "--dashboard", f"127.0.0.1:{port}"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    browser = None
    try:
        browser = chromium(tmp_path)
        open_page(browser, f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 30)

        def count(label: str) -> int:
            got = browser.execute_script("const e = document.querySelector(`#counts tr[data-label='${arguments[0]}']"
                                         " .count`); return e ? e.textContent : null;", label)
            return int(got) if got else 0

        def record(label: str, n: str = "") -> None:
            for field, value in (("label", label), ("count", n)):
                box = browser.find_element(By.ID, field)
                box.clear()
                box.send_keys(value)
            browser.find_element(By.ID, "start").click()

        wait.until(lambda b: b.execute_script("return document.getElementById('connection').textContent") == "live")
        wait.until(lambda b: b.execute_script("return document.querySelectorAll('#signal polyline').length") == 3)
        record("wave", "5")
        wait.until(lambda b: count("wave") == 5)
        assert browser.execute_script("return document.getElementById('status').textContent") == "idle"
        sensor.gesture = "shake"
        record("shake")  # no count: until Stop
        wait.until(lambda b: "recording 'shake'" in b.execute_script("return document.getElementById('status')"
                                                                     ".textContent"))
        time.sleep(3.5)  # about seven recordings of 25 samples at 50 Hz
        height = browser.execute_script("return document.getElementById('signal').getBoundingClientRect().height")
        assert height > 50  # the live signal is shown, not only drawn
        shot = tmp_path / "record-view.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000
        browser.find_element(By.ID, "stop").click()
        wait.until(lambda b: count("shake") >= 5)
        assert count("wave") == 5
        assert "recordings of 'shake'" in browser.execute_script("return document.getElementById('last').textContent")
        points = browser.execute_script("return document.querySelector('#signal polyline').getAttribute('points')")
        assert len(points.split()) > 50  # the live signal of each axis
        keep = os.environ.get("TINYSENSE_SCREENSHOTS")  # the README's picture: TINYSENSE_SCREENSHOTS=docs
        if keep:
            shutil.copy(shot, Path(keep) / shot.name)
    finally:
        if browser is not None:
            browser.quit()
        rec.terminate()
        _, err = rec.communicate(timeout=30)
        sensor.close()
        socat.kill()
    assert rec.returncode == 130 and "Traceback" not in err, err
    ds = datasets.load(f"csv:{out / 'recordings.csv'}", channels=3)
    assert ds.labels == ("shake", "wave") and ds.sample_shape == (25, 3)
