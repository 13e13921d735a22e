"""What the client commands (`chat`, `complete`, `models`) share: the flags that say which server to
talk to, and a small HTTP client for the public OpenAI API with SSE streaming.

These commands use only the public API, as any other client does, so what they show is what users of
curl and the SDKs get.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
BASE_URL_ENV = "ATENEA_BASE_URL"
# The same variable the server reads its key from, so one setting serves both sides of a local setup.
API_KEY_ENV = "ATENEA_API_KEY"
TIMEOUT_S = 600.0  # a long generation on a slow CPU is not an error


class ClientError(Exception):
    """A failure to report in one line: the server's error message, or why it could not be reached."""


def add_server_options(parser: argparse.ArgumentParser, model: bool = True) -> None:
    base_url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parser.add_argument(
        "--base-url",
        default=base_url,
        metavar="URL",
        help=f"the server's OpenAI API root (default: {base_url}; env: {BASE_URL_ENV})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        metavar="KEY",
        help=f"sent as 'Authorization: Bearer KEY' (default: unset, or the env var; env: {API_KEY_ENV})",
    )
    if not model:
        return
    parser.add_argument(
        "--model",
        default=None,
        help="model id to use (default: the first id the server lists in GET /v1/models; env: none)",
    )


def add_sampling_options(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=max_tokens,
        help=f"tokens to generate at most (default: {max_tokens})",
    )
    parser.add_argument(
        "--temperature", type=float, default=None, help="0 is greedy (default: unset, the server's 1.0)"
    )
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: unset, 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="for repeatable sampling (default: unset)")
    parser.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop string, repeatable (default: none)",
    )


def sampling_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields the sampling flags set; unset flags are left out so the server's defaults
    apply, as they would for any other client."""
    fields = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop,
    }
    return {name: value for name, value in fields.items() if value is not None}


class APIClient:
    """A thin synchronous client of the OpenAI HTTP API."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = TIMEOUT_S) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> APIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str) -> dict[str, Any]:
        try:
            response = self._http.get(path)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.base_url}: {exc}") from exc
        return _json_or_raise(response)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.base_url}: {exc}") from exc
        return _json_or_raise(response)

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The `data:` events of a server-sent-event stream, parsed, until `[DONE]`."""
        try:
            with self._http.stream("POST", path, json={**body, "stream": True}) as response:
                if response.status_code >= 400:
                    response.read()
                    _json_or_raise(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:  # a failure after the stream started
                        raise ClientError(_error_message(event))
                    yield event
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.base_url}: {exc}") from exc

    def model_ids(self) -> list[str]:
        return [card["id"] for card in self.get("/models").get("data", [])]

    def pick_model(self, requested: str | None) -> str:
        if requested:
            return requested
        ids = self.model_ids()
        if not ids:
            raise ClientError(f"{self.base_url} serves no model")
        return ids[0]


def _json_or_raise(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code >= 400 or not isinstance(payload, dict):
        detail = _error_message(payload) if isinstance(payload, dict) else response.text[:200]
        raise ClientError(f"HTTP {response.status_code}: {detail}")
    return payload


def _error_message(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    if isinstance(error, dict):
        code = f" ({error['code']})" if error.get("code") else ""
        return f"{error.get('message', error)}{code}"
    return json.dumps(payload)[:200]
