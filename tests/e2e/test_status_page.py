"""The live status page in a real headless Chromium (the system's, driven by its chromedriver):
it loads, shows a request that just ran, and shows the backend going down."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import StartGateway
from tests.support.scripted_backend import Completion, ScriptedBackend

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 9,
    "messages": [{"role": "user", "content": "x"}],
}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    for program in (CHROMIUM, CHROMEDRIVER):  # missing: fail loudly, as .ci/run installs them
        assert shutil.which(program), (
            f"{program} is missing: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def wait_for(driver: WebDriver, element_id: str, wanted: str) -> None:
    WebDriverWait(driver, 10, poll_frequency=0.1).until(
        lambda d: wanted in text_of(d, element_id),
        message=f"#{element_id} never showed {wanted!r}",
    )


def test_status_page_shows_a_request_and_the_backend_going_down(
    browser: WebDriver, scripted_backend: ScriptedBackend, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(scripted_backend.url, "--context-window", "32768")
    browser.get(f"{gateway.url}/status")
    assert browser.title == "mlx-gateway status"
    wait_for(browser, "backends", scripted_backend.url)
    wait_for(browser, "backends", "up")  # the start-up probe found it before any request

    scripted_backend.queue(Completion(text="hi"))
    assert httpx.post(f"{gateway.url}/v1/messages", json=BODY, timeout=10).status_code == 200

    wait_for(browser, "recent", "POST /v1/messages")
    wait_for(browser, "recent", "claude-haiku-4-5")
    wait_for(browser, "recent", "11 / 7")  # the scripted usage: input / output tokens
    wait_for(browser, "backends", "up")
    wait_for(browser, "backends", "32768")

    scripted_backend.stop()
    assert httpx.post(f"{gateway.url}/v1/messages", json=BODY, timeout=10).status_code == 503

    wait_for(browser, "overall", "down")
    wait_for(browser, "backends", "down")
    wait_for(browser, "errors", "MLX backend unavailable")
    row = browser.find_element(By.CSS_SELECTOR, "#backends tr")
    assert row.get_attribute("data-state") == "down"
