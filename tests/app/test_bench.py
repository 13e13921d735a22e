"""The benchmark tools: the serve bench against a fake streaming server, the engine bench's helpers.

The real engine bench needs a model and minutes; these tests cover its accounting with a fake engine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.bench import describe_ms, percentile, register, throughput
from app.bench.engine import make_prompts, run_engine_batch
from app.bench.serve import ServeBenchConfig, format_summary, run_benchmark
from model_runtime.api import RequestOutput, SamplingParams

BASE_URL = "http://bench.test/v1"


class FakeServer:
    """A tiny OpenAI-style chat server: k content chunks, a usage chunk, [DONE].

    `fail` picks request indices (from the prompt's "Request {i}.") that get a 500 instead;
    `break_mid_stream` picks ones that send an error event after the first chunk.
    """

    def __init__(self, chunks: int, fail: set[int] = frozenset(), break_mid_stream: set[int] = frozenset()):
        self.chunks = chunks
        self.fail = fail
        self.break_mid_stream = break_mid_stream
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        index = int(re.search(r"Request (\d+)\.", body["messages"][0]["content"]).group(1))
        if index in self.fail:
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        return StreamingResponse(self.stream(index), media_type="text/event-stream")

    async def stream(self, index: int) -> AsyncIterator[str]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            for i in range(self.chunks):
                await asyncio.sleep(0.001)
                yield _event({"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]})
                if index in self.break_mid_stream:
                    yield _event({"error": {"message": "engine died", "type": "server_error"}})
                    yield "data: [DONE]\n\n"
                    return
            yield _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
            usage = {"prompt_tokens": 7, "completion_tokens": self.chunks, "total_tokens": 7 + self.chunks}
            yield _event({"choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
        finally:
            self.in_flight -= 1


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _bench(server: FakeServer, **config: object) -> dict:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app)) as client:
        result = await run_benchmark(ServeBenchConfig(base_url=BASE_URL, **config), client=client)
    return result.summary()


async def test_serve_bench_counts_tokens_and_latencies() -> None:
    server = FakeServer(chunks=5)
    summary = await _bench(server, num_requests=8, concurrency=3, max_tokens=5)

    assert (summary["requests"], summary["ok"], summary["failed"]) == (8, 8, 0)
    assert summary["model"] == "fake-model"  # from GET /models
    assert summary["completion_tokens"] == 40  # from the usage chunks
    assert summary["output_tok_s"] > 0 and summary["request_s"] > 0
    assert summary["ttft_ms"]["median"] > 0 and summary["ttft_ms"]["p99"] >= summary["ttft_ms"]["median"]
    assert summary["itl_ms"]["median"] is not None  # 4 gaps per request between 5 content chunks
    assert 1 < server.max_in_flight <= 3
    assert summary["errors"] == []


async def test_serve_bench_request_shape() -> None:
    server = FakeServer(chunks=2)
    await _bench(server, num_requests=4, concurrency=2, max_tokens=9, ignore_eos=True, model="m")

    body = server.bodies[0]
    assert body["model"] == "m" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 9 and body["temperature"] == 0.0 and body["ignore_eos"] is True
    prompts = {b["messages"][0]["content"] for b in server.bodies}
    assert len(prompts) == 4  # varied per request so nothing is trivially cached

    plain = FakeServer(chunks=2)
    await _bench(plain, num_requests=1, concurrency=1)
    assert "ignore_eos" not in plain.bodies[0]


async def test_serve_bench_counts_failures() -> None:
    server = FakeServer(chunks=3, fail={0, 2, 4}, break_mid_stream={5})
    summary = await _bench(server, num_requests=8, concurrency=4)

    assert (summary["requests"], summary["ok"], summary["failed"]) == (8, 4, 4)
    assert summary["completion_tokens"] == 4 * 3  # failed requests contribute nothing
    assert any("HTTP 500" in e for e in summary["errors"])
    assert any("engine died" in e for e in summary["errors"])
    table = format_summary(summary)
    assert "Failed requests" in table and "TTFT median / p99 (ms)" in table


async def test_serve_bench_reads_events_split_anywhere_with_crlf_comments_and_event_lines() -> None:
    """SSE as other servers frame it: CRLF line ends, `: ping` comments, `event:` lines, and
    network reads that end mid-line."""

    def sse(payload: dict) -> bytes:
        return f"event: message\r\ndata: {json.dumps(payload)}\r\n\r\n".encode()

    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    stream = b": ping\r\n\r\n" + sse(role)
    for i in range(4):
        stream += sse({"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}) + b": ping\r\n\r\n"
    stream += sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
    stream += b"data: [DONE]"  # no line end before the connection closes

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(stream), 7):
            await asyncio.sleep(0)
            yield stream[start : start + 7]

    async def chat(request: Request) -> Response:
        return StreamingResponse(pieces(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        config = ServeBenchConfig(base_url=BASE_URL, num_requests=2, concurrency=2, model="m")
        summary = (await run_benchmark(config, client=client)).summary()

    assert (summary["ok"], summary["failed"]) == (2, 0), summary["errors"]
    assert summary["completion_tokens"] == 8  # from the usage chunks
    assert summary["itl_ms"]["median"] is not None  # 3 gaps between the 4 content chunks


async def test_serve_bench_all_failed_reports_no_latency() -> None:
    summary = await _bench(FakeServer(chunks=3, fail={0, 1}), num_requests=2, concurrency=2)
    assert summary["ok"] == 0 and summary["output_tok_s"] == 0.0
    assert summary["ttft_ms"]["median"] is None
    assert "-" in format_summary(summary)


def test_stats_helpers() -> None:
    assert throughput(100, 4.0) == 25.0 and throughput(5, 0.0) == 0.0
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    stats = describe_ms([0.010, 0.020, 0.030])
    assert stats["median"] == pytest.approx(20.0) and stats["mean"] == pytest.approx(20.0)


def test_make_prompts_is_seeded_and_avoids_excluded_ids() -> None:
    prompts = make_prompts(4, 32, vocab_size=10, seed=1, exclude={0, 1})
    assert len(prompts) == 4 and all(len(p) == 32 for p in prompts)
    assert all(0 <= t < 10 and t not in {0, 1} for p in prompts for t in p)
    assert prompts == make_prompts(4, 32, vocab_size=10, seed=1, exclude={0, 1})
    assert prompts != make_prompts(4, 32, vocab_size=10, seed=2, exclude={0, 1})


class FakeEngine:
    """Admits `admit` requests per step (a chunked prefill), one token per running request per step."""

    def __init__(self, admit: int, fail: str | None = None) -> None:
        self.admit = admit
        self.fail = fail
        self.pending: list[str] = []
        self.remaining: dict[str, int] = {}

    def add_request(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        self.pending.append(request_id)
        self.remaining[request_id] = params.max_tokens or 1

    def has_work(self) -> bool:
        return bool(self.remaining)

    def step(self) -> list[RequestOutput]:
        running = [r for r in self.remaining if r not in self.pending]
        admitted, self.pending = self.pending[: self.admit], self.pending[self.admit :]
        outputs = []
        for request_id in running + admitted:
            self.remaining[request_id] -= 1
            done = self.remaining[request_id] == 0
            outputs.append(RequestOutput(request_id, "x", [1], finished=done, error=self.fail))
            if done:
                del self.remaining[request_id]
        return outputs


def test_run_engine_batch_splits_prefill_from_decode() -> None:
    clock = itertools.count()  # one "second" per clock read: start, after each of 4 steps, end
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    seen: list[int] = []
    timing = run_engine_batch(
        FakeEngine(admit=2), [[5]] * 4, params, clock=lambda: float(next(clock)), on_step=seen.append
    )

    assert timing.completion_tokens == 12 and timing.steps == 4 and seen == [2, 4, 4, 2]
    assert timing.seconds == 5.0 and timing.tok_s == pytest.approx(12 / 5)
    # Every request has its first token after step 2; steps 3 and 4 are pure decode.
    assert timing.decode_tokens == 6 and timing.decode_seconds == 3.0
    assert timing.as_dict()["decode_tok_s"] == pytest.approx(2.0)


def test_run_engine_batch_raises_on_a_failed_request() -> None:
    params = SamplingParams(temperature=0.0, max_tokens=2)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_engine_batch(FakeEngine(admit=1, fail="out of memory"), [[5]], params)


def test_engine_bench_runs_the_engine_and_its_baseline_and_writes_the_figures(
    tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole `atenea bench engine` on a tiny model: what gpu_check.sh collects from each run."""
    from app.bench.engine import main

    out = tmp_path / "w.json"
    args = ["--model", str(tiny_model_path), "--batch-size", "2", "--prompt-len", "8", "--max-tokens", "4"]
    assert main([*args, "--baseline", "generate", "--profile", "3", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["output_tokens"] == 8
    assert figures["engine"]["completion_tokens"] == 8 and figures["engine"]["tok_s"] > 0
    assert figures["baselines"]["generate"]["completion_tokens"] == 8
    assert figures["engine_over_baseline"]["generate"] > 0
    # The CPU steps one at a time and has no fused GPU kernels.
    assert figures["overlap_steps"] is False and figures["fused_kernels"] is False
    printed = capsys.readouterr().out
    assert "engine / generate = " in printed
    # The profile of three decode steps of both prompts: torch operations on the CPU, no device.
    profile = figures["profile"]
    assert profile["steps"] == 3 and profile["batch"] == 2 and profile["step_ms"] > 0
    assert profile["eager_torch_ops_per_step"] > 0
    assert profile["kernels_per_step"] == 0 and profile["top_kernels"] == []
    assert "profile:  3 decode steps at batch 2" in printed


def test_engine_bench_runs_several_workloads_on_one_engine_and_one_baseline_model(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What gpu_check.sh runs once per shape: the 7B shape's load time paid once, not per workload."""
    from app.bench import baselines
    from app.bench.engine import main
    from model_runtime import engine as engine_module

    loads = {"engine": 0, "reference": 0}
    real_engine, real_reference = engine_module.Engine, baselines.load_reference

    def counting_engine(*args: object, **kwargs: object) -> object:
        loads["engine"] += 1
        return real_engine(*args, **kwargs)

    def counting_reference(*args: object, **kwargs: object) -> object:
        loads["reference"] += 1
        return real_reference(*args, **kwargs)

    monkeypatch.setattr(engine_module, "Engine", counting_engine)
    monkeypatch.setattr(baselines, "load_reference", counting_reference)
    sizes = ["--batch-size", "2", "--prompt-len", "32", "--max-tokens", "4", "--prefix-len", "70"]
    out = str(tmp_path / "{workload}.json")
    assert (
        main(
            [
                "--model",
                str(tiny_model_path),
                "--workload",
                "custom",
                "w1",
                "prefix",
                *sizes,
                "--question-len",
                "8",
                "--rounds",
                "2",
                "--baseline",
                "generate",
                "--json",
                out,
            ]
        )
        == 0
    )
    assert loads == {"engine": 1, "reference": 1}
    custom, w1 = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("custom", "w1"))
    assert custom["output_tokens"] == 8 and custom["baselines"]["generate"]["completion_tokens"] == 8
    assert w1["output_tokens"] == 256 and w1["baselines"]["generate"]["completion_tokens"] == 256
    # Each workload's prompts are its own: nothing an earlier workload left in the cache served them.
    assert custom["cache_hit_tokens"] == w1["cache_hit_tokens"] == 0
    prefix = json.loads((tmp_path / "prefix.json").read_text())
    assert prefix["cache_hit_tokens"] == [64, 64] and prefix["cold_cache_hit_tokens"] == [0, 0]


def test_engine_bench_prefix_alone_keeps_its_cold_requests_cold(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """The engine's warm-up must not leave a timed cold request anything to find in the cache."""
    from app.bench.engine import main

    out = tmp_path / "prefix.json"
    sizes = ["--prefix-len", "70", "--question-len", "8", "--rounds", "3"]
    assert main(["--model", str(tiny_model_path), "--workload", "prefix", *sizes, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["cold_cache_hit_tokens"] == [0, 0, 0] and figures["cache_hit_tokens"] == [64, 64, 64]


def test_prefix_profile_covers_a_cold_and_a_cached_request(tiny_model_path: Path, tmp_path: Path) -> None:
    """`--profile` adds one profiled cold and cached request: whole steps, the host's time in the
    model runner (part of the request's) and its costliest operations."""
    from app.bench.engine import main

    out = tmp_path / "prefix.json"
    sizes = ["--prefix-len", "70", "--question-len", "8", "--rounds", "1", "--profile", "2"]
    assert main(["--model", str(tiny_model_path), "--workload", "prefix", *sizes, "--json", str(out)]) == 0
    profiles = json.loads(out.read_text())["profile"]
    assert set(profiles) == {"cold", "cached"}
    for figures in profiles.values():
        assert figures["steps"] >= 1 and figures["batch"] == 1
        assert 0 < figures["runner_host_ms"] <= figures["request_ms"]
        assert figures["top_host_ops"] and all(op["calls"] >= 1 for op in figures["top_host_ops"])


def test_engine_bench_wants_one_json_file_per_workload(tmp_path: Path) -> None:
    from app.bench.engine import main

    with pytest.raises(SystemExit, match="workload"):
        main(["--workload", "w1", "w2", "--json", str(tmp_path / "all.json")])


def test_prefix_bench_times_each_prefix_cold_then_served_by_the_cache(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    from app.bench.prefix import main

    out = tmp_path / "prefix.json"
    args = ["--model", str(tiny_model_path), "--prefix-len", "70", "--question-len", "8", "--rounds", "2"]
    assert main([*args, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert len(figures["cold_ttft_ms"]) == len(figures["cached_ttft_ms"]) == 2
    # The second request of a round found the prefix's 4 full blocks of 16 tokens, and no more: the
    # rest of the prefix and the new question were computed.
    assert figures["cache_hit_tokens"] == [64, 64] and figures["cold_cache_hit_tokens"] == [0, 0]
    assert figures["cold_over_cached"] == figures["cold_ttft_median_ms"] / figures["cached_ttft_median_ms"]


def test_left_pad_builds_a_left_padded_batch() -> None:
    from app.bench.engine import left_pad

    ids, mask = left_pad([[7, 8, 9], [4]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cli_registers_both_tools() -> None:
    from app.bench import engine, serve

    parser = argparse.ArgumentParser(prog="atenea")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "serve", "-c", "4", "-n", "10", "--max-tokens", "32", "--ignore-eos"])
    assert args.func is serve.run and (args.concurrency, args.num_requests, args.ignore_eos) == (4, 10, True)
    args = parser.parse_args(["bench", "engine", "--batch-size", "16", "--baseline", "none"])
    assert args.func is engine.run and args.batch_size == 16 and args.baseline == "none"
    assert args.model == "smollm2-135m-instruct"


def test_serve_bench_client_processes_share_the_work_and_pool_their_records() -> None:
    import socket
    import threading

    import uvicorn

    from app.bench.serve import run_in_processes

    server = FakeServer(chunks=50)  # ~50 ms a request: the two processes' requests overlap
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    try:
        while not http.started:
            threading.Event().wait(0.05)
        config = ServeBenchConfig(base_url=f"http://127.0.0.1:{port}/v1", num_requests=8, concurrency=4)
        summary = run_in_processes(config, processes=2).summary()
    finally:
        http.should_exit = True
        thread.join(timeout=10)
    assert (summary["requests"], summary["ok"], summary["completion_tokens"]) == (8, 8, 400)
    prompts = [b["messages"][0]["content"] for b in server.bodies]
    indices = sorted(int(re.search(r"Request (\d+)\.", p).group(1)) for p in prompts)
    assert indices == list(range(8))  # each request sent once, numbered across both processes
    assert 2 < server.max_in_flight <= 4  # both processes at once, each within its share
    assert 0 < summary["duration_s"] < 10
