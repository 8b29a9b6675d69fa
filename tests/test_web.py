"""The web page in a real headless browser (Debian's chromium driven by Playwright).

Skips when Playwright or /usr/bin/chromium is missing (`.ci/run` installs both). Screenshots
go to tests/artifacts/ (git-ignored).
"""
import os
import shutil
from pathlib import Path

import pytest

import qpairs
from qpairs.search import QuestionIndex
from qpairs.service import create_app
from tiny_search_model import bank_questions, make_tiny_model, serving

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("QPAIRS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium browser at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    det = qpairs.load(make_tiny_model(tmp_path_factory.mktemp("model")), device="cpu")
    index = QuestionIndex.build(det, bank_questions(), [f"q{i}" for i in range(200)])
    with serving(create_app(det, index, max_wait_ms=1)) as base:
        yield base


@pytest.fixture(scope="module")
def page(url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 900, "height": 900})
        page.set_default_timeout(15_000)
        page.goto(url + "/")
        yield page
        browser.close()


def test_typing_a_question_lists_its_duplicates(page):
    ARTIFACTS.mkdir(exist_ok=True)
    sync_api.expect(page.locator("#status")).to_contain_text("200 questions indexed")
    sync_api.expect(page.locator("#about-default")).to_be_hidden()  # notes on the bundled default: not this model
    page.locator("#question").press_sequentially("who invented PIANO?", delay=10)
    first = page.locator("#results li").first
    sync_api.expect(first.locator(".text")).to_have_text("Who invented piano?")
    sync_api.expect(page.locator("#results li")).to_have_count(10)
    assert first.locator(".prob").inner_text() == "95.0%"
    assert "likely duplicate" in first.locator(".meta").inner_text()
    assert page.locator("#results li.duplicate").count() == 1
    sync_api.expect(page.locator("#search-status")).to_contain_text("1 likely duplicate among the 10 nearest")
    page.screenshot(path=str(ARTIFACTS / "web_search.png"), full_page=True)


def test_compare_mode_scores_two_questions(page):
    page.locator("#tab-compare").click()
    page.locator("#q1").fill("Is Java hard?")
    page.locator("#q2").fill("is java HARD?")
    page.locator("#compare-btn").click()
    sync_api.expect(page.locator("#compare-prob")).to_have_text("95.0%")
    sync_api.expect(page.locator("#compare-verdict")).to_have_text("likely the same question")
    page.screenshot(path=str(ARTIFACTS / "web_compare.png"), full_page=True)

    page.locator("#q2").fill("Who invented tennis?")
    page.locator("#compare-btn").click()
    sync_api.expect(page.locator("#compare-verdict")).to_have_text("probably different questions")

    page.locator("#q2").fill("   ")
    page.locator("#compare-btn").click()
    sync_api.expect(page.locator("#compare-error")).to_contain_text("q2: String should have at least 1 character")
    assert page.locator("#compare-result").is_hidden()
