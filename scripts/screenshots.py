"""Screenshots of the web page (score, batch, review queue) served by a real, trained checkpoint.

    python scripts/screenshots.py --model runs/bench_student_full_minilm/runs/unimoe_guided \
        --task asap-sas-2 --data ../shared/data/asap-sas/train.tsv [--agents local:smollm2]

Starts ``rubricate serve`` on loopback with a throw-away SQLite file, drives Debian's headless Chromium
with Playwright, scores one real response (with the agents' evidence when ``--agents`` is given), uploads a
small CSV batch, overrides the first queued review, and writes ``score.png``, ``batch.png`` and
``reviews.png`` to ``--out`` (default docs/screenshots). The browser test (tests/test_serve_browser.py)
checks the same pages against a fake scorer; this script is only for the documentation's pictures.
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _responses(data: Path, task: str, n: int) -> list[tuple[str, str]]:
    """(response id, text) of the first ``n`` responses of an ASAP-SAS set, through the project's loader."""
    from rubricate.data.loaders import load_asap_sas

    recs = load_asap_sas(data, sets=[int(task.rsplit("-", 1)[-1])])[:n]
    return [(r.response_id, " ".join(r.text.replace("^p", " ").replace("^P", " ").split())) for r in recs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="trained student checkpoint")
    ap.add_argument("--task", default="asap-sas-2")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "asap-sas" / "train.tsv")
    ap.add_argument("--agents", default=None, help="agents backend spec for the evidence (e.g. local:smollm2)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--chromium", default=os.environ.get("RUBRICATE_CHROMIUM", "/usr/bin/chromium"))
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    rows = _responses(a.data, a.task, 21)
    tmp = Path(tempfile.mkdtemp(prefix="rubricate-shots-"))
    port = _port()
    cmd = [sys.executable, "-m", "rubricate", "serve", "--model", str(a.model), "--db", f"sqlite:///{tmp}/shots.db",
           "--port", str(port)] + (["--agents-backend", a.agents] if a.agents else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        a.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(base + "/")
            page.select_option("#task", a.task)
            rid, text = rows[0]
            page.fill("#text", text)
            page.fill("#response_id", rid)
            if a.agents:
                page.check("#agents")
            page.click("#score-btn")
            page.wait_for_selector("#evidence-text mark" if a.agents else "#decoded-score", timeout=300_000)
            page.screenshot(path=str(a.out / "score.png"), full_page=True)

            batch = tmp / "batch.csv"
            with batch.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["task_id", "text", "response_id"])
                w.writerows([a.task, t, i] for i, t in rows[1:])
            page.goto(base + "/batch")
            page.set_input_files("#file", str(batch))
            page.click("button[type=submit]")
            page.wait_for_selector("#results-link", timeout=120_000)
            page.screenshot(path=str(a.out / "batch.png"), full_page=True)

            page.goto(base + "/reviews")
            page.fill("#rater", "rater-1")
            page.dispatch_event("#rater", "change")
            cards = page.locator("article.review")
            if cards.count():
                card = cards.first
                card.locator("textarea").first.fill("Checked against the rubric")
                card.locator("button[value=accept]").click()
                card.locator(".status").first.wait_for(timeout=10_000)
            page.screenshot(path=str(a.out / "reviews.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"wrote {a.out}/score.png, batch.png, reviews.png (server log {tmp / 'server.log'})")


if __name__ == "__main__":
    main()
