"""``medvqa app`` in a real browser: headless Chromium (Debian's package) driven by Playwright's Python API.

Playwright's own browser download is not used: the test points Playwright at ``/usr/bin/chromium``, which the
set-up installs (``make install``).  Every request that does not go to the local server is blocked and recorded,
so the test also shows the page needs nothing from the internet.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import app_fixtures
import pytest
from app_fixtures import APP_MAX_NEW_TOKENS, PATIENT_MARKERS

live_app, app_files = app_fixtures.live_app, app_fixtures.app_files  # the shared server and files

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STEP_TIMEOUT_MS = 120_000  # one upload or one answer; generous for a busy CI machine, but bounded


def _status_contains(page, text: str) -> None:
    page.wait_for_function(
        "text => document.querySelector('#status').innerText.includes(text)",
        arg=text,
        timeout=STEP_TIMEOUT_MS,
    )


def _upload(page, path: Path) -> None:
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():  # a file is shown: remove it so that the file input comes back
        clear.first.click()
        _status_contains(page, "Upload an image")
    page.set_input_files("#upload input[type=file]", str(path), timeout=STEP_TIMEOUT_MS)


@pytest.mark.slow
def test_browser_upload_ask_answer_screenshot_then_bad_file(
    live_app, app_files, tiny_model_dir, tmp_path, capsys
):
    from playwright.sync_api import sync_playwright

    from training.app_backend import AppBackend
    from training.ask import load_model

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: the set-up installs Debian's chromium (make install)")
    backend = AppBackend(*load_model(tiny_model_dir), max_new_tokens=APP_MAX_NEW_TOKENS)
    question = "Which organ is shown in this image?"
    expected = backend.answer(backend.load(app_files["dicom"]).image, question)
    outside: list[str] = []

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(STEP_TIMEOUT_MS)

            def only_local(route) -> None:
                if route.request.url.startswith(live_app.url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_local)
            page.goto(live_app.url, timeout=STEP_TIMEOUT_MS)
            assert "not a diagnosis" in page.locator("#disclaimer").inner_text()

            _upload(page, app_files["dicom"])
            _status_contains(page, "Ready: DICOM · CT")
            assert page.locator("#view img").count() == 1
            page.fill("#question textarea", question)
            page.click("#ask")
            _status_contains(page, "Answered")
            answer = page.locator("#chat [data-testid='bot']").last.inner_text()
            assert " ".join(answer.split()) == " ".join((expected or "(empty answer)").split())
            assert page.locator("#chat [data-testid='user']").last.inner_text().strip() == question
            screenshot = tmp_path / "medvqa-app.png"
            page.screenshot(path=str(screenshot), full_page=True)
            with capsys.disabled():
                print(f"\nmedvqa app screenshot: {screenshot}")
            content = page.content()
            assert not [m for m in PATIENT_MARKERS if m in content]

            _upload(page, app_files["bad"])
            _status_contains(page, "This file cannot be used")
            message = page.locator("#status").inner_text()
            assert "not an image (the file holds text)" in message
            assert str(app_files["bad"].parent) not in message
            # the page keeps working after the bad file
            _upload(page, app_files["png"])
            _status_contains(page, "Ready: image")
        finally:
            browser.close()
    assert outside == []
    assert screenshot.stat().st_size > 10_000
