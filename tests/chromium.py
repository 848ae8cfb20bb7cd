"""report.html in a real browser: Debian's headless Chromium, driven by Playwright.

Playwright's own browser download is not used (nothing is fetched at test time): it
drives the system's /usr/bin/chromium. `.ci/run` installs the package; elsewhere a
test without it skips with the command that installs it (under CI it fails).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

FIRST_SCREEN = {"width": 1280, "height": 800}  # a laptop's browser window, the first screen
# What the environment notes say headless Chromium needs on a closed network: without the
# background-networking flags it keeps trying to reach Google's hosts.
FLAGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "headless Chromium is not installed (Debian: apt-get install chromium; .ci/run does it)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI must render the report, not skip it")
    pytest.skip(message)


def first_screen(html: Path, screenshot: Path) -> dict:
    """Open `html` at 1280x800 and return what a reader sees without scrolling:
    {"text": the text of headings, paragraphs and cells whose top is on the first screen,
    "height": the page's full height (collapsed), "images": how many with every section opened,
    "broken_images": the alt text of those that did not decode}; the first screen is saved as
    `screenshot`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        try:
            page = browser.new_page(viewport=FIRST_SCREEN)
            page.goto(html.resolve().as_uri(), wait_until="load")
            seen = page.evaluate("""(height) => {
                const visible = [];
                for (const el of document.querySelectorAll('h1, h2, p, td, th, summary')) {
                    const box = el.getBoundingClientRect();
                    if (box.height > 0 && box.top < height) visible.push(el.innerText);
                }
                return {text: visible.join(' '), height: document.documentElement.scrollHeight};
            }""", FIRST_SCREEN["height"])
            page.screenshot(path=str(screenshot))
            # Then every collapsed section opened, as a reader would: each image must decode.
            seen.update(page.evaluate("""async () => {
                document.querySelectorAll('details').forEach(d => { d.open = true; });
                const images = [...document.images];
                const decoded = await Promise.all(images.map(i => i.decode().then(() => i.naturalWidth > 0, () => false)));
                return {images: images.length, broken_images: images.filter((_, k) => !decoded[k]).map(i => i.alt)};
            }"""))
        finally:
            browser.close()
    return seen
