"""The page of `ulmfit serve` in a real headless Chromium (Debian's chromium + chromedriver,
driven by Selenium) against a real uvicorn server on loopback: type a review, press the
button, read the label, the probability bars and the shaded words.

Skips, saying why, where no Chromium or chromedriver is installed (scripts/test.sh installs
them where apt-get and root allow)."""

import os
import shutil
import threading
import time

import pytest
from test_predict import tiny_models

import ulmfit
from ulmfit.serve import create_app

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
REVIEW = (
    "What a WONDERFUL film!!! The acting was great, the story moving; "
    "I'd watch it again <3 & recommend it."
)


def _browser() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(
            n for n, p in (("a Chromium browser", browser), ("chromedriver", driver)) if p is None
        )
        pytest.skip(
            f"no headless browser: {missing} not found on PATH (Debian: apt-get install "
            "chromium chromium-driver; scripts/test.sh does this where it can)"
        )
    return browser, driver


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A uvicorn server on a free loopback port, serving the tiny single-label model."""
    uvicorn = pytest.importorskip("uvicorn")
    predictor = ulmfit.load(tiny_models(tmp_path_factory)["single"], device="cpu")
    config = uvicorn.Config(create_app(predictor), host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/", predictor
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _browser()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    except Exception as e:  # noqa: BLE001 - e.g. a browser that cannot start in this container
        pytest.skip(f"Chromium did not start: {str(e).splitlines()[0][:200]}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _classify(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "go").click()
    WebDriverWait(driver, 60).until(
        lambda d: (
            d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error")
        )
    )


def test_type_a_review_and_read_label_bars_and_shaded_words(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, predictor = server
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda d: "classes:" in d.find_element(By.ID, "model").text)
    _classify(browser, REVIEW)
    assert browser.find_element(By.ID, "error").text == ""
    label = browser.find_element(By.ID, "label").text
    assert label == predictor.predict([REVIEW])[0]["label"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#bars tr.prob")
    assert len(rows) == len(predictor.classes)
    assert [r.get_attribute("data-label") for r in rows if "chosen" in r.get_attribute("class")] == [label]  # fmt: skip
    assert float(rows[0].find_element(By.CSS_SELECTOR, ".bar div").get_attribute("style").split("width:")[1].split("%")[0]) > 0  # fmt: skip
    # every word shaded by its importance; the text shown is the text typed
    shown = browser.execute_script("return document.getElementById('words').textContent")
    assert shown == REVIEW
    words = browser.find_elements(By.CSS_SELECTOR, "#words span.word")
    weights = {w.text: float(w.get_attribute("data-weight")) for w in words}
    assert {"What", "WONDERFUL", "film", "acting", "great", "recommend"} <= set(weights)
    assert max(weights.values()) == 1.0 and min(weights.values()) >= 0
    top = max(words, key=lambda w: float(w.get_attribute("data-weight")))
    assert top.value_of_css_property("background-color").startswith("rgba(245, 158, 11")


def test_page_shows_user_text_as_text_and_errors(server, browser):
    from selenium.webdriver.common.by import By

    url, _ = server
    browser.get(url)
    evil = "<img src=x onerror=\"document.title='pwned'\"> bad movie"
    _classify(browser, evil)
    assert browser.execute_script("return document.getElementById('words').textContent") == evil
    assert browser.find_elements(By.CSS_SELECTOR, "#words img") == []
    assert browser.title != "pwned"
    browser.find_element(By.ID, "text").clear()
    browser.find_element(By.ID, "go").click()
    assert browser.find_element(By.ID, "error").text == "Type a text first."
