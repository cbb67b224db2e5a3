"""The report in a real browser: headless Chromium (Debian ``chromium`` + ``chromium-driver``)
opens it from disk. No console errors, every image loads, the explorer's sliders change
the frame and the probabilities. The screenshot is kept in out/test-artifacts/report.png.

``make test`` installs chromium when it is missing and it can (root, apt); otherwise this
test is skipped with the reason.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
ARTEFACTS = Path(__file__).resolve().parents[1] / "out" / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and DRIVER.is_file()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver "
           "(apt-get install chromium chromium-driver; `make test` does it as root)")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1280,900", "--allow-file-access-from-files"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(DRIVER)))
    yield driver
    driver.quit()


from test_report import report_file, results  # noqa: E402,F401  (the same session-wide report)


def _frame_state(driver):
    return driver.execute_script("""
        var box = document.querySelector('.explorer');
        return {frame: box.dataset.frame, input: box.querySelector('img.input').src,
                maps: Array.from(box.querySelectorAll('img.map')).map(function (i) { return i.src; }),
                probs: Array.from(box.querySelectorAll('.bar-row')).map(function (r) { return r.dataset.prob; }),
                widths: Array.from(box.querySelectorAll('.fill')).map(function (f) { return f.style.width; }),
                readout: box.querySelector('.readout').textContent};""")


@pytest.mark.slow
def test_report_in_headless_chromium(browser, report_file, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(report_file.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    broken = browser.execute_script("""return Array.from(document.images)
        .filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
        .map(function (i) { return i.alt; });""")
    assert broken == []
    assert browser.execute_script("return document.images.length") >= 11

    before = _frame_state(browser)
    assert before["readout"].startswith("shift dy 0, dx 0")
    slider = browser.find_element(By.CSS_SELECTOR, ".explorer input.dx")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", slider)
    slider.click()                                     # a real click puts focus on the slider
    slider.send_keys(Keys.END)                         # as far right as it goes
    after = _frame_state(browser)
    assert after["frame"] != before["frame"]
    assert after["input"] != before["input"]
    assert after["maps"] != before["maps"]
    assert after["probs"] != before["probs"] and after["widths"] != before["widths"]
    assert "dx 2" in after["readout"]
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []

    # the whole page, for a person to look at
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 100, 12000))
    browser.execute_script("window.scrollTo(0, 0);")
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTEFACTS / "report.png")
    assert shot.stat().st_size > 20_000
