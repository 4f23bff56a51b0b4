"""The dashboard in a real headless Chromium (selenium): nodes, the ring with layer ranges, a streamed chat
reply, download progress; each against an `exo-actor start` process."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from tests.api.servers import process_server
from tests.conftest import require

pytestmark = pytest.mark.ring


@pytest.fixture(scope="module")
def browser():
    webdriver = require("selenium.webdriver")
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
    args = ("--model", "smollm2-135m", "--engine", "torch", "--enable-speculative", "--draft-model", "ngram")
    with process_server(*args) as srv:
        yield srv


@pytest.mark.slow
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
    assert cells[2] == "torch" and cells[5] == "0-29" and "GiB" in cells[3]
    held = float(cells[4].removesuffix(" MiB"))  # the weights as the engine holds them: 4/8-bit, not float32
    assert 80 < held < 150, cells  # SmolLM2 Q4_1: ~97 MiB on torch, 513 MiB as float32
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


def test_dashboard_shows_download_progress(browser, hub, tmp_path, monkeypatch):
    """`exo-actor start --model org/tiny` with an empty $EXO_HOME: while the weights come from the
    (deliberately slow) Hub, the dashboard's Downloads table shows a moving progress bar, then done."""
    import contextlib
    import subprocess
    import sys
    import time

    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.api.servers import free_port, wait_ready

    hub.rate = 100_000  # the 0.66 MB of weights take ~7 s
    monkeypatch.setenv("EXO_HOME", str(tmp_path / "home"))
    port = free_port()
    cmd = [sys.executable, "-m", "exo_actor.cli", "start", "--model", "org/tiny", "--api-host", "127.0.0.1"]
    cmd += ["--discovery", "manual"]
    proc = subprocess.Popen([*cmd, "--api-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait = WebDriverWait(browser, 60, poll_frequency=0.1)
        for _ in range(300):  # the gateway comes up while the model downloads
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        browser.get(url + "/")

        def rows(state: str):  # type: ignore[no-untyped-def]
            # read in one script: the table is rebuilt every second, so element handles go stale
            return browser.execute_script(
                "return [...document.querySelectorAll(`#downloads tr.download[data-state='${arguments[0]}']`)]"
                ".map((r) => [r.querySelector('progress').value, r.querySelector('progress').max, r.textContent])",
                state,
            )

        def downloading(_):  # type: ignore[no-untyped-def]
            return [value for value, top, _ in rows("downloading") if 0 < value < top]

        values = wait.until(downloading)
        assert browser.find_element(By.ID, "state").text == "downloading"
        later = wait.until(lambda d: (v := downloading(d)) and v[0] > values[0] and v)
        assert later[0] > values[0]  # the bar moves
        done = wait.until(lambda _: rows("done"))
        assert "100% of" in done[0][2]
        wait_ready(url)
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.slow
def test_the_what_if_panel_plans_the_cluster_with_another_device(browser, speculative_server):
    """The panel starts from this cluster's node; adding a device re-plans the layers over two devices and
    shows the predicted speed (POST /v1/plan); a malformed device line shows the server's one-line error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(speculative_server.url + "/")
    wait = WebDriverWait(browser, 30)
    box = browser.find_element(By.ID, "whatif-devices")
    wait.until(lambda d: box.get_attribute("value").count(":") >= 2)
    assert len(box.get_attribute("value").strip().splitlines()) == 1  # this node
    box.send_keys("\nlaptop:16:60")
    streams = browser.find_element(By.ID, "whatif-streams")
    streams.clear()
    streams.send_keys("4")
    browser.find_element(By.ID, "whatif-run").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#whatif-plan tr")) == 2)
    rows = [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in browser.find_elements(By.CSS_SELECTOR, "#whatif-plan tr")
    ]
    names = [r[0] for r in rows]
    assert "laptop" in names and len(set(names)) == 2
    last = max(int(r[1].split("-")[1]) for r in rows)
    assert last == 29  # every layer of SmolLM2's 30 is placed
    speed = browser.find_element(By.ID, "whatif-speed").text
    assert "one stream" in speed and "4 streams" in speed and "tok/s" in speed
    box.send_keys("\nbroken-device")
    browser.find_element(By.ID, "whatif-run").click()
    wait.until(lambda d: "NAME:MEMORY_GB:BANDWIDTH_GBps" in d.find_element(By.ID, "whatif-speed").text)
