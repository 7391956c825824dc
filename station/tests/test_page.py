"""The operator's page in a real browser (Playwright driving Debian's chromium, headless): an operator changes the
product over from uploaded images, calibrates, watches verdicts arrive, marks a false alarm, and finds it in the
history and the confusion counts. Screenshots go to runs/station-screenshots/ for the docs."""

import os
import shutil
from pathlib import Path

import pytest
from servers import StationProcess
from test_web import SUPPORT, TOKEN, drop, png
from toy_bundle import frames

CHROMIUM = os.environ.get("PACKD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "runs" / "station-screenshots"
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture()
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.mark.slow
def test_operator_changes_over_calibrates_and_marks_a_false_alarm(tmp_path, bundle, browser):
    camera = tmp_path / "camera"
    camera.mkdir()
    station = StationProcess(["--bundle", str(bundle), "--line", "bottles", "--source", f"folder:{camera}", "--db",
                              f"sqlite:///{tmp_path}/records.db", "--token", TOKEN, "--data",
                              str(tmp_path / "state")], tmp_path).start()
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    supports = [uploads / f"support{i}.png" for i in range(2)]
    normals = [uploads / f"normal{i}.png" for i in range(8)]
    for path, frame in zip(supports + normals, [*SUPPORT, *frames(8, seed=2)]):
        path.write_bytes(png(frame))
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(station.url)
        line = page.locator("#line-bottles")
        line.locator(".line-name").wait_for()
        assert line.locator(".line-name").inner_text() == "bottles"
        assert "none" in line.locator(".product").inner_text()

        line.locator(".changeover [name=product]").fill("cola")
        line.locator(".changeover [name=images]").set_input_files([str(p) for p in supports])
        line.locator(".changeover button[type=submit]").click()  # no token yet: refused, nothing changed
        page.wait_for_function("document.querySelector('#line-bottles .message').textContent.includes('token')")
        assert "error" in line.locator(".message").get_attribute("class")

        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        page.fill("#operator", "ann")
        page.dispatch_event("#operator", "change")
        line.locator(".changeover button[type=submit]").click()
        page.wait_for_function("document.querySelector('#line-bottles .message').textContent.includes('cola')")
        line.locator(".calibrate [name=images]").set_input_files([str(p) for p in normals])
        line.locator(".calibrate button[type=submit]").click()
        page.wait_for_function("document.querySelector('#line-bottles .message').textContent.includes('Calibrated')")
        page.wait_for_function("!document.querySelector('#line-bottles .threshold').textContent.includes('not')")

        drop(camera, [*SUPPORT, *SUPPORT], "good")
        drop(camera, frames(1, seed=4, low=0, high=256), "bad")
        page.wait_for_function("document.querySelectorAll('#line-bottles .verdict').length >= 5")
        assert line.locator(".verdict.defect").count() == 1
        assert line.locator(".verdict.ok").count() == 4
        defect = line.locator(".verdict.defect")
        assert "DEFECT" in defect.inner_text() and "bad000.png" in defect.inner_text()
        defect.locator("img").wait_for()
        page.screenshot(path=str(SHOTS / "live.png"), full_page=True)

        page.once("dialog", lambda d: d.accept())
        defect.locator("button.false-alarm").click()
        page.wait_for_function("document.querySelector('#line-bottles .message').textContent.includes('Recorded')")
        assert "normal pool" in line.locator(".message").inner_text()
        page.wait_for_function("document.querySelector('#line-bottles .false-alarm').textContent === '1'")
        assert line.locator(".true-ok").inner_text() == "4" and line.locator(".true-defect").inner_text() == "0"

        line.locator(".history-box summary").click()
        page.wait_for_function("document.querySelectorAll('#line-bottles .history tbody tr').length === 5")
        marked = line.locator(".history tbody tr", has_text="bad000.png")
        assert "false alarm" in marked.inner_text()
        line.locator(".search [name=verdict]").select_option("ok")
        line.locator(".search button").click()
        page.wait_for_function("document.querySelectorAll('#line-bottles .history tbody tr').length === 4")
        line.locator(".audit-box summary").click()
        page.wait_for_function("document.querySelectorAll('#line-bottles .audit li').length === 3")
        assert "feedback by ann" in line.locator(".audit li").first.inner_text()
        page.screenshot(path=str(SHOTS / "history.png"), full_page=True)
    finally:
        station.stop()
