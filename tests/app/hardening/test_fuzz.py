"""Schemathesis against the app's own OpenAPI schema: over a thousand generated requests, valid and
invalid, across every documented operation; not one may answer 5xx, and every error is in OpenAI's
envelope. The app is the real one (middleware, routes, validation, streaming) over a fake engine, so
this runs in seconds; the e2e malformed-request test covers the real engine."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python.asgi import ASGIClient, get_client

from app.main import create_app
from app.settings import Settings
from tests.app.hardening.helpers import StrictTokenizerEngine

EXAMPLES_PER_MODE = 250
MIN_CASES = 1000
ENVELOPE = {"message", "type", "param", "code"}


def fuzzer(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    client: ASGIClient,
    cases: Counter[str],
    failures: list[str],
) -> Callable[[], None]:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case) -> None:
        response = case.call(session=client)
        cases[operation.label] += 1
        where = f"{operation.label} ({mode}): {response.status_code} {response.text[:200]}"
        if response.status_code >= 500:
            failures.append(where)
        elif response.status_code >= 400 and case.method.upper() != "HEAD":
            error = response.json().get("error")
            if not isinstance(error, dict) or set(error) != ENVELOPE:
                failures.append(f"not the envelope: {where}")

    return call


def test_generated_requests_never_get_a_server_error() -> None:
    app = create_app(Settings(), engine=StrictTokenizerEngine(model_id="fake-model"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    cases: Counter[str] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models/{model_id}"} <= labels

    with get_client(app) as client:  # one in-process client for every call
        for operation in operations:
            fuzzer(operation, GenerationMode.POSITIVE, client, cases, failures)()
            # Unsatisfiable: nothing to get wrong, the operation takes no input (GET /health).
            with contextlib.suppress(Unsatisfiable):
                fuzzer(operation, GenerationMode.NEGATIVE, client, cases, failures)()

    assert not failures, failures[:10]
    # Operations without inputs give one case each; the others give many.
    assert sum(cases.values()) >= MIN_CASES, cases
