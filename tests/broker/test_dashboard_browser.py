"""The dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver) via Selenium.

`.ci/run` installs both packages. Screenshots of every page go to a temp directory, or to
``M2KT_SCREENSHOTS`` (the README's come from ``M2KT_SCREENSHOTS=docs/img``).
"""

import os
import shutil
from pathlib import Path

import factory
import pytest
from brokerkit import ADMIN_TOKEN
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow  # browser tests: headless Chromium

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "install the Debian packages chromium and chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path):
    target = os.environ.get("M2KT_SCREENSHOTS")
    out = (ROOT / target) if target else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


def _sign_in(driver, url: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{url}/dashboard")
    WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith("/dashboard/login"))
    driver.find_element(By.NAME, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith("/dashboard"))


def _publish(broker, teacher, seed: int, topics: list[str]) -> str:
    pid, env, payload = factory.packet(teacher.key, seed=seed, topics=topics)
    with broker.http(teacher.token) as http:
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
    return pid


@pytest.mark.parametrize("broker", [{"sse_keepalive_seconds": 1}], indirect=True)
def test_dashboard_in_a_browser(broker, browser, shots):
    teacher = broker.teacher("browser-teacher")
    _, student = broker.student("browser-student")
    ids = [_publish(broker, teacher, i, t) for i, t in enumerate((["web.alpha"], ["web.alpha", "web.beta"]))]
    with broker.http(student) as http:
        http.post(f"/v1/packets/{ids[0]}/reports", json={"verdict": "accepted", "metrics": {"mean_agreement": 0.81}})
        http.post(f"/v1/packets/{ids[1]}/reports", json={"verdict": "rolled_back", "metrics": {"mean_agreement": 0.42}})

    # an unauthenticated visitor gets the sign-in page, not data
    browser.get(f"{broker.url}/dashboard/packets/{ids[0]}")
    assert browser.current_url.endswith("/dashboard/login") and "web.alpha" not in browser.page_source
    browser.save_screenshot(str(shots / "dashboard-login.png"))

    _sign_in(browser, broker.url, student)
    assert "web.alpha" in browser.find_element(By.ID, "topics").text
    # a packet published now appears in the topics table without a reload
    _publish(broker, teacher, 7, ["web.gamma"])
    WebDriverWait(browser, 15).until(lambda d: "web.gamma" in d.find_element(By.ID, "topics").text)
    browser.save_screenshot(str(shots / "dashboard-topics.png"))

    browser.get(f"{broker.url}/dashboard/packets/{ids[1]}")
    assert "rolled_back" in browser.page_source and teacher.keyid in browser.page_source
    browser.save_screenshot(str(shots / "dashboard-packet.png"))
    browser.find_element(By.PARTIAL_LINK_TEXT, "provenance").click()
    WebDriverWait(browser, 10).until(lambda d: "hash chain verified" in d.find_element(By.ID, "chain").text)
    browser.save_screenshot(str(shots / "dashboard-provenance.png"))

    # the admin quarantines the packet from its page; the student's view loses it
    _sign_in(browser, broker.url, ADMIN_TOKEN)
    browser.get(f"{broker.url}/dashboard/packets/{ids[1]}")
    browser.find_element(By.NAME, "reason").send_keys("suspicious concept")
    browser.find_element(By.CSS_SELECTOR, "form.admin button").click()
    WebDriverWait(browser, 10).until(lambda d: "Lift quarantine" in d.page_source)
    _sign_in(browser, broker.url, student)
    assert ids[1][:16] not in browser.page_source and ids[0][:16] in browser.page_source
    browser.get(f"{broker.url}/dashboard/packets/{ids[1]}")
    assert "not-found" in browser.page_source or "no such packet" in browser.page_source
