"""Every request of the malformed corpus is a 4xx in the envelope with a short message, and the
server is healthy after all of them."""

from __future__ import annotations

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.app.hardening.helpers import CHAT, StrictTokenizerEngine, chat_body, http
from tests.app.hardening.malformed_corpus import Malformed, corpus

CASES = corpus("fake-model")
# A message may quote a little of the input, never more.
MAX_MESSAGE_CHARS = 400


def check_rejected(case: Malformed, response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (case.name, response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"}, case.name
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, case.name
    assert isinstance(error["message"], str) and isinstance(error["type"], str), case.name
    assert len(error["message"]) <= MAX_MESSAGE_CHARS, (case.name, error["message"][:500])


def test_the_corpus_is_large_and_varied() -> None:
    assert len(CASES) >= 100
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_malformed_request_is_a_4xx_in_the_envelope(case: Malformed) -> None:
    engine = StrictTokenizerEngine()
    app = create_app(Settings(), engine=engine)
    async with http(app) as client:
        response = await client.request(case.method, case.path, content=case.body, headers=case.headers)
        check_rejected(case, response)
        assert engine.calls == [], "a malformed request reached the engine"
        # Healthy after: the same app serves a good request.
        assert (await client.get("/health")).status_code == 200
        assert (await client.post(CHAT, json=chat_body(max_tokens=2))).status_code == 200
