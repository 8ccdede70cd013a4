"""One walk through the web UI in real headless Chromium (Debian's chromium and chromedriver),
driven by Selenium: log in, see the dashboard's charts, watch an association appear on the
status page while it runs, see a study's previews."""

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from archive.models import Study
from tests.conftest import sample_file
from tests.peers import scu, send_files, system_tool

PASSWORD = "browser-test-password"


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = system_tool("chromium", "chromium")
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1280,1000",
    ]:
        options.add_argument(flag)
    # The console, to see any Content Security Policy violation.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=Service(system_tool("chromedriver", "chromium-driver"))
    )
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(browser, condition, timeout: float = 15):
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition)


def test_dashboard_status_and_previews_in_chromium(
    browser, live_server, django_user_model, start_scp, fast_heartbeat
):
    server = start_scp()
    django_user_model.objects.create_superuser("admin", "admin@example.org", PASSWORD)
    assert send_files(server.port, [sample_file("CT_small.dcm"), sample_file("MR_small.dcm")])

    browser.get(live_server.url + "/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    _wait(browser, lambda b: "Site administration" in b.page_source)

    # The dashboard: four charts drawn, today's column of the daily chart with a height.
    browser.find_element(By.LINK_TEXT, "Storage dashboard").click()
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "svg.chart"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == 4
    today = browser.find_elements(By.CSS_SELECTOR, "#chart-per-day rect.bar")[-1]
    assert today.rect["height"] > 10 and today.rect["width"] > 0

    # The status page, opened before the association: the row appears without a reload.
    browser.get(live_server.url + "/admin/status/")
    _wait(browser, lambda b: "running" in b.find_element(By.ID, "receivers").text)
    assert "BROWSER_SCU" not in browser.find_element(By.ID, "associations").text
    ae = scu("BROWSER_SCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP")
    assert assoc.is_established
    try:
        ds = dcmread(sample_file("CT_small.dcm"))
        ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7133.3.1"
        assert assoc.send_c_store(ds).Status == 0
        row = _wait(browser, lambda b: "BROWSER_SCU" in b.find_element(By.ID, "associations").text)
        assert row
        _wait(browser, lambda b: _association_instances(b) == "1")
    finally:
        assoc.release()
    _wait(browser, lambda b: "BROWSER_SCU" not in b.find_element(By.ID, "associations").text)
    assert browser.find_elements(By.CSS_SELECTOR, "#per-minute svg rect.bar")

    # A study page: its series previews load as real images.
    study = Study.objects.get(series__modality="CT")
    browser.get(f"{live_server.url}/admin/archive/study/{study.pk}/change/")
    images = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".series-strip img"))
    assert len(images) == 1
    _wait(
        browser,
        lambda b: b.execute_script(
            "const i = document.querySelector('.series-strip img');"
            "return i.complete && i.naturalWidth;"
        ),
    )
    # The CT's own 128 x 128 pixels, not the 256-pixel placeholder.
    assert (
        browser.execute_script("return document.querySelector('.series-strip img').naturalWidth")
        == 128
    )
    # An instance page with its preview, and an admin form with the admin's own scripts.
    instance = study.series.get().instances.first()
    browser.get(f"{live_server.url}/admin/archive/instance/{instance.pk}/change/")
    _wait(browser, lambda b: b.execute_script("return document.images.length > 0"))
    browser.get(f"{live_server.url}/admin/receiver/allowedae/add/")
    _wait(browser, lambda b: b.find_elements(By.NAME, "ae_title"))

    # Everything worked under the Content Security Policy, which the pages did send.
    violations = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]
    assert violations == []


def _association_instances(browser) -> str:
    cells = browser.find_elements(By.CSS_SELECTOR, "#associations tbody tr td")
    return cells[4].text if len(cells) > 4 else ""
