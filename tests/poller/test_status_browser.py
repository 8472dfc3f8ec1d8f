"""The status page in a real headless browser, on the real daemon with the real Docker engine and registry: a
merge on a real git repository appears on the page and becomes succeeded without a reload, its log is followed
live to the line the Dockerfile printed, and a branch named `x<svg/onload=alert(1)>` is shown as text, never run.

It writes .work/status-page.png (and .work/status-build.png); docs/status-page.png in the README is a copy of the
first: `scripts/test -k status_browser && cp .work/status-page.png docs/`.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from polling_server.config import parse_settings
from polling_server.daemon import Daemon
from polling_server.planning.model import BuildStatus
from tests.browser import browser, full_page_screenshot  # noqa: F401 - the fixture
from tests.gitrepo import GitRepo, git
from tests.poller.build_helpers import dockerfile, unique_image

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
EVIL_BRANCH = "x<svg/onload=alert(1)>"
TOKEN = "status-page-read-token-4e1f"
PRINTED = "status-page: built from the merged change"


def _wait(driver, what: str, predicate, timeout: float = 180):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: predicate(d), message=what)


def _no_alert(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - reading it is the check


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_a_merge_is_followed_on_the_status_page_in_a_real_browser(tmp_path, registry, base_image, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    (tmp_path / "git").mkdir()
    repo = GitRepo(tmp_path / "git", branch=EVIL_BRANCH)
    repo.commit({"Dockerfile": dockerfile(base_image, f'RUN echo "step one" && sleep 6 && echo "{PRINTED}"\n'),
                 "marker.txt": "base\n"}, "base")
    image = unique_image("cd-status")
    settings = parse_settings({
        "state_path": str(tmp_path / "state.db"), "poll_interval_seconds": 0.3,
        "http": {"host": "127.0.0.1", "port": 0, "read_token": TOKEN},
        "registry": {"host": registry.host},
        "builds": {"retries": 0, "timeout_seconds": 180, "workdir": str(tmp_path / "work")},
        "repositories": [{"url": repo.url, "name": "app", "image": image, "branch": EVIL_BRANCH,
                          "floating_tags": True}],
    }, env={})
    daemon = Daemon(settings)
    server = daemon.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        _wait(browser, "the baseline", lambda _d: daemon.store.repo_state("app").baseline, 30)

        # Signing in through the form: the session cookie carries the rest.
        browser.get(f"{base}/")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
        _wait(browser, "the status page", lambda d: d.find_elements(By.ID, "repositories"), 30)
        browser.get_log("browser")  # the sign-in form came with a 401, as it should: start the console afresh
        assert browser.find_element(By.CSS_SELECTOR, "#repositories .branch").text == EVIL_BRANCH
        assert browser.find_elements(By.CSS_SELECTOR, "#builds tr[data-build]") == []
        browser.execute_script("window.sameDocument = true")  # a reload would forget it
        overview = browser.current_window_handle

        # A merge: a feature branch merged with a merge commit, pushed to the watched branch.
        git("checkout", "-q", "-b", "feature", cwd=repo.work)
        repo.commit({"marker.txt": f"merged {uuid.uuid4()}\n"}, "the change", push=False)  # never a cached step
        git("checkout", "-q", EVIL_BRANCH, cwd=repo.work)
        git("merge", "-q", "--no-ff", "feature", "-m", "Merge branch 'feature'", cwd=repo.work)
        repo.push()
        merge = repo.head()

        row = f"#builds tr[data-sha='{merge}']"
        _wait(browser, "the merge's build to appear", lambda d: d.find_elements(By.CSS_SELECTOR, row), 60)
        build_id = browser.find_element(By.CSS_SELECTOR, row).get_attribute("data-build")

        # Its log, in a second tab, while it runs: followed to the end without a reload.
        browser.switch_to.new_window("tab")
        browser.get(f"{base}/builds/{build_id}")
        log = browser.find_element(By.ID, "log")
        followed_live = log.get_attribute("data-complete") == "false"
        browser.execute_script("window.sameDocument = true")
        _wait(browser, "the printed line in the log", lambda d: PRINTED in d.find_element(By.ID, "log").text)
        _wait(browser, "the log to be complete", lambda d: d.find_element(By.ID, "log-state").text == "complete")
        _wait(browser, "the build page to say succeeded",
              lambda d: d.find_element(By.CSS_SELECTOR, "#build h1 .badge").text == "succeeded", 30)
        text = browser.find_element(By.ID, "log").text
        assert followed_live, "the build had already finished when its page opened: nothing was followed"
        assert re.search(r"^Step 1/\d+ : FROM ", text, re.M) and text.index("step one") < text.index(PRINTED)
        assert f"pushed {registry.host}/{image}:sha-{merge[:12]}" in text
        assert browser.execute_script("return window.sameDocument === true")
        ref = browser.find_element(By.XPATH, "//dt[text()='Ref']/following-sibling::dd[1]")
        assert ref.text == EVIL_BRANCH
        _no_alert(browser)
        assert browser.find_elements(By.TAG_NAME, "svg") == []
        full_page_screenshot(browser, ROOT / ".work" / "status-build.png")

        # Back on the overview, never reloaded: the build became succeeded there too; and a release tag follows.
        browser.switch_to.window(overview)
        _wait(browser, "the overview to show it succeeded", lambda d: d.find_elements(
            By.CSS_SELECTOR, f"{row}[data-status='succeeded']"), 60)
        repo.tag("v1.0.0")
        _wait(browser, "the release to succeed", lambda d: len(
            d.find_elements(By.CSS_SELECTOR, f"{row}[data-status='succeeded']")) == 2, 120)
        _wait(browser, "the floating tags", lambda d: ":1.0" in d.find_element(By.ID, "repositories").text, 30)
        states = [e.text for e in browser.find_elements(By.CSS_SELECTOR, f"{row} .state")]
        assert states == ["succeeded", "succeeded"]
        assert browser.execute_script("return window.sameDocument === true")
        assert browser.find_element(By.CSS_SELECTOR, "#repositories .branch").text == EVIL_BRANCH
        _no_alert(browser)
        assert browser.find_elements(By.TAG_NAME, "svg") == []
        assert _console_errors(browser) == []  # nothing refused by the CSP, no script error
        full_page_screenshot(browser, ROOT / ".work" / "status-page.png")
    finally:
        daemon.stop()
        server.stop()

    # What the page said is what happened: the build succeeded and its image is in the registry.
    from polling_server.state import StateStore

    record = StateStore.in_memory_copy(settings.state_path).build(int(build_id))
    assert record.status is BuildStatus.SUCCEEDED and record.sha == merge
    assert registry.manifest(image, f"sha-{merge[:12]}")[0] == record.digest
