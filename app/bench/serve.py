"""`atenea bench serve`: N streaming chat completions against an OpenAI-compatible server, C at a time.

Modelled on `vllm bench serve`: time to first token and inter-token latencies come from the SSE
stream as the client sees it, completion tokens from the usage chunk (`stream_options.include_usage`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import httpx
from tqdm import tqdm

from app.bench import describe_ms, fmt, throughput, write_json

DEFAULT_BASE_URL = "http://localhost:8000/v1"
DEFAULT_PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
MAX_ERRORS_REPORTED = 5
# Long enough that no answer completes it within a benchmark's max_tokens: constrained requests
# then generate as many tokens as unconstrained ones, and the two runs compare like for like.
LONG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"lines": {"type": "array", "items": {"type": "string"}, "minItems": 256}},
    "required": ["lines"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class ServeBenchConfig:
    base_url: str = DEFAULT_BASE_URL
    model: str | None = None  # None: the first id from GET /models
    num_requests: int = 64
    concurrency: int = 8
    max_tokens: int = 128
    temperature: float = 0.0
    ignore_eos: bool = False
    prompt: str = DEFAULT_PROMPT
    api_key: str | None = None
    response_format: str = "text"  # text | json_object | json_schema (LONG_SCHEMA)
    first_index: int = 0  # requests are numbered from here (each client process has its own range)


@dataclass
class RequestRecord:
    ok: bool = False
    ttft_s: float | None = None  # request sent -> first non-empty content delta
    itl_s: list[float] = field(default_factory=list)  # gaps between successive content deltas
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None


@dataclass
class ServeBenchResult:
    config: ServeBenchConfig
    model: str
    duration_s: float
    records: list[RequestRecord]

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.records if r.ok]
        tokens = sum(r.completion_tokens for r in ok)
        errors = [r.error for r in self.records if r.error]
        return {
            "base_url": self.config.base_url,
            "model": self.model,
            "concurrency": self.config.concurrency,
            "max_tokens": self.config.max_tokens,
            "ignore_eos": self.config.ignore_eos,
            "response_format": self.config.response_format,
            "requests": len(self.records),
            "ok": len(ok),
            "failed": len(self.records) - len(ok),
            "duration_s": self.duration_s,
            "completion_tokens": tokens,
            "output_tok_s": throughput(tokens, self.duration_s),
            "request_s": throughput(len(ok), self.duration_s),
            "ttft_ms": describe_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
            "itl_ms": describe_ms([gap for r in ok for gap in r.itl_s]),
            "latency_ms": describe_ms([r.latency_s for r in ok]),
            "errors": list(dict.fromkeys(errors))[:MAX_ERRORS_REPORTED],
        }


def prompt_for(config: ServeBenchConfig, index: int) -> str:
    # The index goes first so no two requests share a prefix beyond the chat template's own.
    return f"Request {index}. {config.prompt}"


def request_body(config: ServeBenchConfig, model: str, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt_for(config, index)}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
    }
    if config.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension; sent only when asked, strict servers reject it
    if config.response_format == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif config.response_format == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "lines", "strict": True, "schema": LONG_SCHEMA},
        }
    return body


def auth_headers(config: ServeBenchConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}


async def first_model_id(client: httpx.AsyncClient, config: ServeBenchConfig) -> str:
    response = await client.get(f"{config.base_url}/models", headers=auth_headers(config))
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise RuntimeError(f"{config.base_url}/models lists no model")
    return str(models[0]["id"])


def _content_of(chunk: dict[str, Any]) -> str:
    return "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])


async def _read_stream(response: httpx.Response, record: RequestRecord, sent: float) -> None:
    last: float | None = None
    content_chunks = 0
    usage_tokens: int | None = None
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            # Without a usage chunk, one content chunk is the best count of tokens we have.
            record.completion_tokens = usage_tokens if usage_tokens is not None else content_chunks
            record.ok = True
            return
        chunk = json.loads(payload)
        if "error" in chunk:
            error = chunk["error"]
            record.error = f"stream error: {error.get('message') if isinstance(error, dict) else error}"
            return
        now = time.perf_counter()
        if _content_of(chunk):
            content_chunks += 1
            if last is None:
                record.ttft_s = now - sent
            else:
                record.itl_s.append(now - last)
            last = now
        if chunk.get("usage"):
            usage_tokens = int(chunk["usage"].get("completion_tokens", 0))
    record.error = "stream ended without [DONE]"


async def send_one(
    client: httpx.AsyncClient, config: ServeBenchConfig, model: str, index: int
) -> RequestRecord:
    record = RequestRecord()
    sent = time.perf_counter()
    try:
        body = request_body(config, model, index)
        url = f"{config.base_url}/chat/completions"
        async with client.stream("POST", url, json=body, headers=auth_headers(config)) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                record.error = f"HTTP {response.status_code}: {text[:200]}"
            else:
                await _read_stream(response, record, sent)
    except (httpx.HTTPError, json.JSONDecodeError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    record.latency_s = time.perf_counter() - sent
    if record.error:
        record.ok = False
    return record


def make_client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # No read/pool timeout: a long generation at high concurrency must not be cut off mid-stream.
    timeout = httpx.Timeout(None, connect=60.0)
    return httpx.AsyncClient(limits=limits, timeout=timeout)


async def run_benchmark(
    config: ServeBenchConfig,
    client: httpx.AsyncClient | None = None,
    progress: bool = False,
    ready: Callable[[], None] | None = None,
) -> ServeBenchResult:
    """Runs the benchmark; `client` lets a test route requests to an in-process app. `ready` is
    called once the model is known, just before the first request is sent."""
    if client is None:
        async with make_client(config.concurrency) as own:
            return await run_benchmark(config, own, progress, ready)
    model = config.model or await first_model_id(client, config)
    if ready is not None:
        ready()
    records: list[RequestRecord | None] = [None] * config.num_requests
    indices = iter(range(config.num_requests))
    bar = tqdm(total=config.num_requests, unit="req", file=sys.stderr, disable=not progress)

    async def worker() -> None:
        # `indices` is shared: each of the C workers takes the next request when its last one ends.
        for index in indices:
            records[index] = await send_one(client, config, model, config.first_index + index)
            bar.update(1)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, config.concurrency))))
    duration = time.perf_counter() - started
    bar.close()
    return ServeBenchResult(config, model, duration, [r for r in records if r is not None])


def run_in_processes(config: ServeBenchConfig, processes: int) -> ServeBenchResult:
    """The benchmark from `processes` client processes, each with its share of the requests and
    of the concurrency, started together; their records are pooled.

    One asyncio client spends ~200 us of CPU per streamed chunk (on a 2-core EPYC), so a single
    process caps what it can see at a few thousand tokens a second: a fast GPU server streams more.
    """
    processes = max(1, min(processes, config.concurrency, config.num_requests))
    if processes == 1:
        return asyncio.run(run_benchmark(config, progress=True))
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results = context.Queue()
    shares = []
    first = 0
    for i in range(processes):
        count = config.num_requests // processes + (i < config.num_requests % processes)
        concurrency = config.concurrency // processes + (i < config.concurrency % processes)
        shares.append(replace(config, num_requests=count, concurrency=concurrency, first_index=first))
        first += count
    workers = [context.Process(target=_client_process, args=(s, start, results)) for s in shares]
    for worker in workers:
        worker.start()
    parts = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    failures = [p for p in parts if isinstance(p, str)]
    if failures:
        raise RuntimeError(failures[0])
    started = min(p[0] for p in parts)
    duration = max(p[0] + p[1].duration_s for p in parts) - started
    records = [r for p in parts for r in p[1].records]
    return ServeBenchResult(config, parts[0][1].model, duration, records)


def _client_process(config: ServeBenchConfig, start: Any, results: Any) -> None:
    """One client process: waits at `start` for the others, then runs its share; puts (monotonic
    start time, result) on `results`, or the error's text."""
    began: list[float] = []

    def ready() -> None:
        start.wait()
        began.append(time.monotonic())

    try:
        result = asyncio.run(run_benchmark(config, ready=ready))
    except Exception as exc:
        start.abort()  # the others must not wait for this one
        results.put(f"{type(exc).__name__}: {exc}")
        return
    results.put((began[0], result))


def format_summary(summary: dict[str, Any]) -> str:
    ttft, itl = summary["ttft_ms"], summary["itl_ms"]
    rows = [
        ("Model", summary["model"]),
        ("Concurrency / requests", f"{summary['concurrency']} / {summary['requests']}"),
        ("Successful requests", summary["ok"]),
        ("Failed requests", summary["failed"]),
        ("Duration (s)", fmt(summary["duration_s"])),
        ("Completion tokens", summary["completion_tokens"]),
        ("Output throughput (tok/s)", fmt(summary["output_tok_s"])),
        ("Request throughput (req/s)", fmt(summary["request_s"])),
        ("TTFT median / p99 (ms)", f"{fmt(ttft['median'])} / {fmt(ttft['p99'])}"),
        ("ITL median / p99 (ms)", f"{fmt(itl['median'])} / {fmt(itl['p99'])}"),
    ]
    lines = ["=" * 20 + " Serving benchmark " + "=" * 20]
    lines += [f"{name:<30}{value}" for name, value in rows]
    lines += [f"error: {e}" for e in summary["errors"]]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="the API root, ending in /v1")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="requests in flight at most")
    parser.add_argument("-n", "--num-requests", type=int, default=64, help="requests to send in all")
    parser.add_argument("--max-tokens", type=int, default=128, help="max_tokens of each request")
    parser.add_argument("--ignore-eos", action="store_true", help="always generate max_tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="varied per request by its index")
    parser.add_argument("--model", default=None, help="default: the first id from GET /models")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="sent as a bearer token (default: unset; env: OPENAI_API_KEY)",
    )
    parser.add_argument(
        "--response-format",
        choices=("text", "json_object", "json_schema"),
        default="text",
        help="constrain every answer (json_schema: a long built-in schema); default: text",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes sharing the requests and the concurrency (one caps at a few thousand "
        "tok/s of its own CPU)",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the summary here")


def config_from_args(args: argparse.Namespace) -> ServeBenchConfig:
    if args.concurrency < 1 or args.num_requests < 1 or args.max_tokens < 1:
        raise SystemExit("--concurrency, --num-requests and --max-tokens must be >= 1")
    return ServeBenchConfig(
        base_url=args.base_url.rstrip("/"),
        model=args.model,
        num_requests=args.num_requests,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        ignore_eos=args.ignore_eos,
        prompt=args.prompt,
        api_key=args.api_key,
        response_format=args.response_format,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        result = run_in_processes(config, args.processes)
    except (httpx.HTTPError, RuntimeError) as exc:  # e.g. no server at --base-url
        print(f"error: cannot benchmark {config.base_url}: {exc}", file=sys.stderr)
        return 1
    summary = result.summary()
    print(format_summary(summary))
    if args.json:
        write_json(
            args.json,
            {**summary, "client_processes": args.processes, "config": {**asdict(config), "api_key": None}},
        )
    return 0 if summary["ok"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="load a running OpenAI-compatible server")
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atenea bench serve")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
