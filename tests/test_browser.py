"""The report in a real browser: headless Chromium (Debian ``chromium`` + ``chromium-driver``)
opens it from disk. No console errors, every image loads, the explorer's sliders change
the frame and the probabilities, a click widens an experiment's figure; the overview table
fits a 1280 px page and scrolls inside its own box on a 390 px phone. Full-page screenshots
at both widths are kept in out/test-artifacts/ (report-1280.png, report-390.png) with the
page heights (report-heights.json), for a person to look at.

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
def test_report_in_headless_chromium(browser, report_file):  # noqa: F811
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
    assert browser.execute_script("return document.images.length") == 14

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

    widen = browser.find_element(By.CSS_SELECTOR, ".experiment .figures img")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", widen)
    widen.click()                                      # a click shows the figure at full width
    assert "wide" in widen.find_element(By.XPATH, "./ancestor::div[contains(@class, 'experiment')]") \
        .get_attribute("class")


def _layout(driver) -> dict:
    return driver.execute_script("""
        var box = document.querySelector('table.headline').parentElement;
        var cells = box.querySelectorAll('th, td'), right = 0;
        for (var i = 0; i < cells.length; i++) { right = Math.max(right, cells[i].getBoundingClientRect().right); }
        return {height: document.documentElement.scrollHeight, page: document.documentElement.scrollWidth,
                box: box.clientWidth, table: box.scrollWidth, right: right, boxRight: box.getBoundingClientRect().right,
                viewport: window.innerWidth};""")


def _full_page(driver, width: int, path: Path) -> dict:
    """Lay the page out ``width`` px wide (a phone below 500 px), screenshot all of it."""
    metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 500}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.refresh()
    layout = _layout(driver)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": min(layout["height"], 16000)})
    driver.execute_script("window.scrollTo(0, 0);")
    assert driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return layout


@pytest.mark.slow
def test_report_fits_a_laptop_and_a_phone(browser, report_file):  # noqa: F811
    import json
    from PIL import Image
    browser.get(report_file.as_uri())
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    wide = _full_page(browser, 1280, ARTEFACTS / "report-1280.png")
    phone = _full_page(browser, 390, ARTEFACTS / "report-390.png")
    (ARTEFACTS / "report-heights.json").write_text(json.dumps({"1280": wide, "390": phone}, indent=1) + "\n")
    # 1280 px: the whole overview table is on the page, no column cut off, nothing scrolls sideways
    assert wide["page"] <= 1280 and wide["table"] <= wide["box"] and wide["right"] <= wide["boxRight"] + 1
    # 390 px: the page itself does not scroll sideways; the table scrolls inside its own box
    assert phone["viewport"] == 390 and phone["page"] <= 390
    assert phone["table"] > phone["box"]
    # short: two models under two protocols, three experiments, one animation and explorer
    assert wide["height"] < 7000, wide
    for width in (1280, 390):
        with Image.open(ARTEFACTS / f"report-{width}.png") as shot:
            assert shot.size[0] == width and shot.size[1] >= min(phone["height"] if width == 390 else wide["height"], 16000) - 1
