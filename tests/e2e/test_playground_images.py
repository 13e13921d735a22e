"""The playground's image tab in headless Chromium against the real server and its default image
model: an image generated and shown, in both response formats. Screenshots under artifacts/playground/."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.chromium import ARTIFACTS
from tests.e2e.conftest import MODEL, Server


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
def test_image_is_generated_and_shown(page: Page, server: Server, response_format: str) -> None:
    page.goto(f"{server.base_url}/")
    expect(page.locator("#chat-model option").first).to_have_attribute("value", MODEL)
    page.click("#tab-image")
    expect(page.locator("#image-panel")).to_be_visible()
    expect(page.locator("#chat-panel")).to_be_hidden()
    page.select_option("#image-format", response_format)
    page.fill("#image-seed", "7")
    page.fill("#image-prompt", "a red circle on a blue background")
    page.click("#generate")
    image = page.locator("#gallery figure img")
    expect(image).to_have_count(1, timeout=120_000)
    expect(page.locator("#status")).to_contain_text("1 image(s) in")
    # Decoded by the browser, not just an <img> with a source: it has pixels.
    image.evaluate("img => img.decode()")
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width >= 32 and height >= 32
    source = image.get_attribute("src") or ""
    assert source.startswith("data:image/png;base64," if response_format == "b64_json" else "blob:")
    expect(page.locator("#gallery figcaption")).to_have_text("a red circle on a blue background")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"image-{response_format}.png", full_page=True)
