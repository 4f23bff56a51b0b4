"""The dashboard in a real headless Chromium: nodes, the ring with layer ranges, a streamed chat reply."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from tests.api.servers import process_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("Chromium is missing: apt-get install chromium chromium-driver (.ci/run does)")
    profile = tempfile.mkdtemp(prefix="exo-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-quic",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def speculative_server(smollm2_path):
    with process_server("--model", "smollm2-135m", "--enable-speculative", "--draft-model", "ngram") as srv:
        yield srv


def test_dashboard_shows_the_ring_and_streams_a_chat_reply(browser, speculative_server):
    smollm2_server = speculative_server
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(smollm2_server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(EC.text_to_be_present_in_element((By.ID, "state"), "ready"))
    assert browser.find_element(By.ID, "model").text == "smollm2-135m"
    row = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#nodes tr.node")))
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[2] == "numpy" and cells[4] == "0-29" and "GiB" in cells[3]
    ring_label = browser.find_element(By.CSS_SELECTOR, "#ring text.layers")
    assert ring_label.text == "layers 0-29"

    box = browser.find_element(By.ID, "prompt")
    box.send_keys("What is the capital of France?")
    browser.find_element(By.ID, "send").click()
    reply = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#log .msg.assistant[data-done='1']")))
    assert len(reply.text.strip()) > 5  # sampled (temperature 1, OpenAI's default): any real sentence
    assert int(reply.get_attribute("data-chunks")) > 3  # it arrived as a stream of pieces
    assert browser.find_element(By.CSS_SELECTOR, "#log .msg.user").text.endswith("capital of France?")
    WebDriverWait(browser, 10).until(
        lambda d: float(d.find_element(By.ID, "tps").text) > 0 or int(d.find_element(By.ID, "total").text) > 0
    )
    spec = browser.find_element(By.ID, "spec")  # speculative decoding figures, refreshed with the rest
    assert spec.is_displayed() and browser.find_element(By.ID, "draft").text == "ngram"
    assert browser.find_element(By.ID, "acceptance").text.endswith("%")
    assert float(browser.find_element(By.ID, "tpp").text) >= 1.0
