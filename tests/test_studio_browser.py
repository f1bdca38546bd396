"""The studio in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven
by selenium) opens the page, uploads a primer whose track name is HTML, generates, waits for
the score and the audio, checks both load, that the track name is shown as text, and that a
MIDI download arrives. Skips with the reason where Chromium or selenium is missing or cannot
start (.ci/run installs them with apt-get where it can)."""

from __future__ import annotations

import os
import pathlib
import shutil
import threading
import time

import midi_factory as mf
import mido
import pytest
from conftest import melody_corpus, small_run_config

from jaxcomposer.studio import app, server
from jaxcomposer.train import loop

EVIL = "<img src=x id=evil onerror=alert(1)><script>alert(2)</script>"


def _driver(download_dir: str):
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("no chromium/chromedriver (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": download_dir, "download.prompt_for_download": False}
    )
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as e:
        pytest.skip(f"headless Chromium cannot start here: {str(e).splitlines()[0]}")
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": download_dir}
    )
    return driver


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_page_generates_shows_score_and_audio_and_downloads_midi(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _driver(str(downloads))
    from selenium.webdriver.common.by import By

    corpus = melody_corpus(tmp_path / "midi")
    workdir = str(tmp_path / "run")
    loop.train(small_run_config(corpus, tmp_path / "cache"), workdir, progress=False)
    studio = app.Studio([workdir], str(tmp_path / "results"), render_processes=0)
    httpd = server.make_server(studio, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    events = [(0, mido.MetaMessage("track_name", name=EVIL)), mf.tempo(0, 90)]
    primer = mf.write_midi_file(tmp_path / "primer.mid", [events + mf.notes(mf.melody(2, 12))])
    try:
        driver.get(httpd.url)
        _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#model option"), 30, "the models")
        for name, value in (("bars", "2"), ("num_samples", "1")):
            field = driver.find_element(By.ID, name)
            field.clear()
            field.send_keys(value)
        driver.find_element(By.ID, "primer").send_keys(str(primer))
        driver.find_element(By.ID, "generate").click()
        _wait(
            lambda: driver.find_elements(By.CSS_SELECTOR, "#results[data-job]")
            or driver.find_element(By.ID, "error").text,
            300, "the results",
        )  # fmt: skip
        assert driver.find_element(By.ID, "error").text == ""
        # The score pages are loaded images; the audio's metadata loads (preload="metadata").
        _wait(
            lambda: driver.execute_script(
                "const imgs = [...document.querySelectorAll('img.score')];"
                "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"
            ),
            60, "the score pages to load",
        )  # fmt: skip
        duration = _wait(
            lambda: driver.execute_script(
                "const a = document.querySelector('audio');"
                "return a && a.readyState >= 1 && a.duration > 0 ? a.duration : 0;"
            ),
            60, "the audio's metadata",
        )  # fmt: skip
        assert duration > 1.0
        assert driver.find_elements(By.CSS_SELECTOR, "canvas.roll")  # the piano roll
        # The track name is shown as text, never as markup.
        primer_text = driver.find_element(By.CSS_SELECTOR, "#results .primer").text
        assert EVIL in primer_text
        assert not driver.find_elements(By.ID, "evil")
        assert driver.execute_script("return document.scripts.length") == 1
        # A MIDI download arrives in full.
        driver.find_element(By.CSS_SELECTOR, "a[data-kind=midi]").click()
        done = _wait(
            lambda: [p for p in downloads.iterdir() if p.suffix == ".mid"], 60, "the MIDI download"
        )
        assert pathlib.Path(done[0]).read_bytes()[:4] == b"MThd"
        assert not [p for p in os.listdir(downloads) if p.endswith(".crdownload")]
        # A result becomes the primer (its MIDI fetched back from the studio); the page sends
        # the bars to regenerate; a bad range is a message on the page.
        driver.find_element(By.CSS_SELECTOR, "#results button.again").click()
        assert "sample_00" in driver.find_element(By.ID, "result-primer").text
        driver.find_element(By.ID, "infill").send_keys("9-2")
        driver.find_element(By.ID, "generate").click()
        error = _wait(lambda: driver.find_element(By.ID, "error").text, 30, "the range's message")
        assert "bars 9-2 are not a range of bars" in error
    finally:
        driver.quit()
        httpd.shutdown()
        httpd.server_close()
        studio.close()
