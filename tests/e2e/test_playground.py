"""The web playground in a real headless Chromium (Debian's, driven by Playwright) against the real
server: what a user sees when they open http://host:8000/ and chat.

Screenshots of each round trip are saved under artifacts/playground/.
"""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.e2e.chromium import ARTIFACTS
from tests.e2e.conftest import API_KEY, MODEL, Server


def open_playground(page: Page, server: Server) -> None:
    page.goto(f"{server.base_url}/")
    expect(page.locator("#chat-model option").first).to_have_attribute("value", MODEL)


def set_value(page: Page, selector: str, value: str) -> None:
    """Sets an input (ranges included) the way a user's edit does, firing its input event."""
    page.locator(selector).evaluate(
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", value
    )


# Records every text the assistant's last message showed, so the test can tell streaming
# (several growing texts) from a reply that appeared all at once.
RECORD_TEXTS = """() => {
  window.shownTexts = [];
  new MutationObserver(() => {
    const last = document.querySelector('#messages li.assistant:last-child .content');
    if (last && last.textContent && window.shownTexts.at(-1) !== last.textContent) {
      window.shownTexts.push(last.textContent);
    }
  }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}"""


def test_chat_round_trip_streams_the_reply(page: Page, server: Server, client) -> None:
    system = "You are a geography teacher."
    question = "What is the capital of France?"
    expected = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=40,
        temperature=0,
    )
    expected_text = expected.choices[0].message.content
    assert len(expected.choices[0].message.content.split()) > 3  # enough tokens to see it stream

    open_playground(page, server)
    page.fill("#system-prompt", system)
    set_value(page, "#temperature", "0")
    expect(page.locator("#temperature-value")).to_have_text("0")
    page.fill("#max-tokens", "40")
    page.evaluate(RECORD_TEXTS)
    page.fill("#chat-input", question)
    page.press("#chat-input", "Enter")

    expect(page.locator("#messages li.user .content")).to_have_text(question)
    expect(page.locator("#stop-generation")).to_be_disabled(timeout=120_000)  # the stream has ended
    reply = page.locator("#messages li.assistant .content")
    expect(reply).to_have_text(expected_text)
    shown: list[str] = page.evaluate("window.shownTexts")
    assert len(shown) >= 3, shown  # the text grew piece by piece as tokens arrived
    assert all(expected_text.startswith(text) for text in shown), shown
    expect(page.locator("#status")).to_contain_text("tokens in")  # the usage chunk was read
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "chat.png", full_page=True)


def test_second_turn_sends_the_conversation(page: Page, server: Server, client) -> None:
    first, second = "What is the capital of France?", "And of Spain?"
    open_playground(page, server)
    set_value(page, "#temperature", "0")
    page.fill("#max-tokens", "16")
    for text in (first, second):
        page.fill("#chat-input", text)
        page.click("#send")
        expect(page.locator("#messages li.assistant")).to_have_count(1 if text == first else 2)
        expect(page.locator("#stop-generation")).to_be_disabled(timeout=120_000)
    replies = page.locator("#messages li.assistant .content").all_text_contents()
    expected = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": first},
            {"role": "assistant", "content": replies[0]},
            {"role": "user", "content": second},
        ],
        max_tokens=16,
        temperature=0,
    )
    assert replies[1] == expected.choices[0].message.content


def test_an_api_error_is_shown_with_the_server_message(page: Page, server: Server) -> None:
    open_playground(page, server)
    page.locator("#chat-model").evaluate(
        "el => el.add(new Option('no-such-model', 'no-such-model', true, true))"
    )
    page.fill("#chat-input", "Hello")
    page.click("#send")
    expect(page.locator("#messages li.assistant.error")).to_contain_text("404")
    expect(page.locator("#status")).to_contain_text("does not exist")
    expect(page.locator("#send")).to_be_enabled()


def test_api_key_is_sent_when_the_server_needs_one(page: Page, keyed_server: Server) -> None:
    page.goto(f"{keyed_server.base_url}/")  # the page itself needs no key
    expect(page.locator("#status")).to_contain_text("401", timeout=30_000)
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#chat-model option").first).to_have_attribute("value", MODEL)
    page.fill("#max-tokens", "8")
    page.fill("#chat-input", "Hello")
    page.click("#send")
    expect(page.locator("#stop-generation")).to_be_disabled(timeout=120_000)
    expect(page.locator("#messages li.assistant")).not_to_have_class("assistant error")
    assert page.locator("#messages li.assistant .content").text_content()
    # Kept for the next visit, as users expect of a key field.
    page.reload()
    expect(page.locator("#api-key")).to_have_value(API_KEY)
    expect(page.locator("#chat-model option").first).to_have_attribute("value", MODEL)
