"""The web page in a real browser: Debian's headless Chromium driven by Playwright.

Scores an answer (with the agents' evidence highlighted), runs a CSV batch, overrides a review, then
checks the database. Screenshots go to ``$RUBRICATE_SCREENSHOTS`` (the docs use docs/screenshots/),
else to the test's temp dir. Skips when Chromium or Playwright is missing, saying which.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from rubricate.serve import db
from rubricate.serve.app import create_app
from rubricate.serve.settings import ServeSettings
from serve_fakes import FakeScorer, fake_agent_runner, serve_in_thread

CHROMIUM = os.environ.get("RUBRICATE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    pytest.importorskip("playwright", reason="the playwright Python package is not installed")
    tmp = tmp_path_factory.mktemp("browser")
    app = create_app(ServeSettings(database_url=f"sqlite:///{tmp}/web.db"), scorer=FakeScorer(),
                     agent_runner=fake_agent_runner(score_offset=2))
    srv, th, base = serve_in_thread(app)
    yield app, base, tmp
    srv.should_exit = True
    th.join(timeout=10)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        yield pg
        browser.close()


def _shots(tmp: Path) -> Path:
    out = Path(os.environ.get("RUBRICATE_SCREENSHOTS") or tmp)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _unlabelled(page) -> list[str]:
    """Form controls without an accessible label (accessibility smoke check)."""
    return page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.outerHTML)""")


def test_score_batch_and_review_in_a_browser(server, page) -> None:
    app, base, tmp = server
    shots = _shots(tmp)

    # 1) score an answer, with the agents' evidence
    page.goto(base + "/")
    page.select_option("#task", "sci-1")
    assert "Which gases could be the same substance" in page.inner_text("#task-info")
    assert "Uses density as the evidence" in page.inner_text("#task-info")
    page.fill("#text", "Gas A and D have the same density so they could be the same gas.")
    page.fill("#response_id", "web-1")
    page.check("#agents")
    page.click("#score-btn")
    page.wait_for_selector("#evidence-text mark", timeout=20_000)
    assert page.inner_text("#decoded-score").strip().isdigit()
    assert "E1" in page.inner_text("#probs-table") and "%" in page.inner_text("#probs-table")
    assert "Expert 2" in page.inner_text("#gates-table")
    assert page.inner_text("#evidence-text mark") == "Gas A and"
    assert _unlabelled(page) == []
    page.screenshot(path=str(shots / "score.png"), full_page=True)

    # an uncertain answer goes to the queue
    page.fill("#text", "I am unsure, maybe gas B")
    page.fill("#response_id", "web-2")
    page.uncheck("#agents")
    page.click("#score-btn")
    page.wait_for_selector("#review-flag:has-text('needs review')", timeout=20_000)

    # 2) batch upload with progress
    csv_path = tmp / "batch.csv"
    csv_path.write_text("task_id,text,response_id\n" + "".join(
        f"{'sci-1' if i % 2 else 'read-2'},answer {i} about density,batch-{i}\n" for i in range(30))
        + "nope,bad task,batch-x\n", encoding="utf-8")
    page.goto(base + "/batch")
    page.set_input_files("#file", str(csv_path))
    page.click("button[type=submit]")
    page.wait_for_selector("#results-link", timeout=30_000)
    assert "30 of 30" in page.inner_text("#batch-status")
    assert "32" in page.inner_text("#problems-table")  # the bad row, by its line number
    assert _unlabelled(page) == []
    page.screenshot(path=str(shots / "batch.png"), full_page=True)

    # 3) review queue: override the uncertain answer
    page.goto(base + "/reviews")
    page.fill("#rater", "rater-7")
    page.dispatch_event("#rater", "change")
    card = page.locator("article.review", has_text="web-2")
    rid = card.get_attribute("id").split("-")[1]
    card.locator(f"#rv-{rid}-score").select_option("2")
    card.locator(f"#rv-{rid}-comment").fill("Names density, deserves 2")
    card.get_by_role("button", name="Override with these scores").click()
    card.locator(".status:has-text('Saved')").wait_for(timeout=10_000)
    assert "overridden" in card.inner_text()
    assert _unlabelled(page) == []
    page.screenshot(path=str(shots / "reviews.png"), full_page=True)

    # 4) the database holds what the page showed
    with db.make_sessionmaker(app.state.engine)() as s:
        rv = s.scalar(select(db.Review).join(db.Response).where(db.Response.response_id == "web-2"))
        assert rv.status == "overridden" and rv.final_scores["score"] == 2
        dec = rv.decisions[-1]
        assert (dec.rater_id, dec.action, dec.comment) == ("rater-7", "override", "Names density, deserves 2")
        web1 = s.scalar(select(db.Response).where(db.Response.response_id == "web-1"))
        assert len(web1.predictions) == 1 and web1.agent_results[0].components["same_gas"]["evidence"] == ["Gas A and"]
        assert len(s.scalars(select(db.Response).where(db.Response.response_id.like("batch-%"))).all()) == 30


def test_keyboard_only_scoring(server, page) -> None:
    """The score form works from the keyboard alone (tab order reaches the controls, Enter submits)."""
    _, base, _ = server
    page.goto(base + "/")
    page.focus("#text")
    page.keyboard.type("keyboard answer about density")
    page.keyboard.press("Tab")  # -> response id
    page.keyboard.press("Tab")  # -> agents checkbox
    page.keyboard.press("Tab")  # -> Score button
    assert page.evaluate("document.activeElement.id") == "score-btn"
    page.keyboard.press("Enter")
    page.wait_for_selector("#decoded-score", timeout=20_000)


def test_keyboard_only_review(server, page) -> None:
    """A review card from the keyboard alone: Tab from the rater id reaches the card, Enter accepts it."""
    from rubricate.serve.validation import Item

    app, base, tmp = server
    app.state.service.score([Item("sci-1", "unsure, keyboard review", "kb-1")])
    page.goto(base + "/reviews")
    card = page.locator("article.review", has_text="kb-1")
    assert "Which gases could be the same substance" in card.inner_text()  # the question beside the response
    assert "distribution of score" in card.inner_text()
    page.fill("#rater", "")  # the page remembers the last rater id in this browser
    page.focus("#rater")
    page.keyboard.type("kb-rater")
    target = card.get_attribute("id")
    for _ in range(40):  # tab order: rater id, then each pending card and its controls
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == target:
            break
    assert page.evaluate("document.activeElement.id") == target
    page.keyboard.press("Enter")
    card.locator(".status:has-text('Saved')").wait_for(timeout=10_000)
    assert card.locator("button").count() == 0  # decided: read-only
    page.screenshot(path=str(_shots(tmp) / "review-keyboard.png"), full_page=True)
    with db.make_sessionmaker(app.state.engine)() as s:
        rv = s.scalar(select(db.Review).join(db.Response).where(db.Response.response_id == "kb-1"))
        assert rv.status == "accepted" and [d.rater_id for d in rv.decisions] == ["kb-rater"]
