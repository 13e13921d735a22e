"""Mixed traffic against a running server for N minutes; reports failures and resident-memory drift.

Traffic: chat (plain and streamed), completions (one prompt and several), image generations when the
server has the endpoint, streams and requests cut off mid-way, and malformed requests. Expected
answers: 200s that parse, 4xx envelopes for the malformed ones, 429 when the server is full. Anything
else — a 5xx, a broken stream, a connection error — is an unexpected failure.

Memory: the server's RSS (from /proc/PID/status) is sampled throughout; drift is the last sample
against the first one taken after the warm-up (allocators and caches grow at first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BAD_BODIES = [
    b'{"model": "MODEL", "messages": [',
    b'{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    b'{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "surprise": 1}',
    b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "MODEL", "prompt": [999999999]}',
    b"\xff\xfe\x00",
    b"[1, 2, 3]",
]
TOPICS = ["the sea", "a lighthouse", "bread", "a fox", "winter", "trains", "a library", "bees"]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """The process's children, theirs, and so on (the engine's own process, when it has one)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    except OSError:
        pass
    return found


def tree_rss_kib(pid: int) -> int | None:
    """Resident memory of the server and every process under it: with `--engine-process` the model
    and its KV cache live in a child."""
    server = rss_kib(pid)
    if server is None:
        return None
    return server + sum(rss_kib(child) or 0 for child in descendants(pid))


async def settled_health(client: httpx.AsyncClient, seconds: float = 30.0) -> httpx.Response:
    """/health once nothing is running or waiting (aborted streams take a step or two to leave)."""
    deadline = time.monotonic() + seconds
    while True:
        health = await client.get("/health")
        if health.status_code != 200 or time.monotonic() > deadline:
            return health
        body = health.json()
        if body["running"] == 0 and body["waiting"] == 0:
            return health
        await asyncio.sleep(0.2)


def kv_returned(health: httpx.Response) -> bool:
    if health.status_code != 200:
        return False
    body = health.json()
    return body["running"] == 0 and body["kv_blocks_free"] == body["kv_blocks_total"]


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.outcomes["unexpected"] += 1
        if len(self.failures) < 50:
            self.failures.append(what)


class Soak:
    def __init__(self, client: httpx.AsyncClient, model: str, images: bool, rng: random.Random) -> None:
        self.client = client
        self.model = model
        self.images = images
        self.rng = rng
        self.tally = Tally()

    def chat_body(self, stream: bool) -> dict[str, object]:
        topic = self.rng.choice(TOPICS)
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": f"Write a few lines about {topic}."}],
            "max_tokens": self.rng.randint(8, 64),
            "temperature": self.rng.choice([0, 0.7, 1.0]),
            "stream": stream,
        }

    def expect_json(self, name: str, response: httpx.Response) -> None:
        if response.status_code == 429:
            self.tally.outcomes[f"{name}:429"] += 1
        elif response.status_code == 200:
            response.json()
            self.tally.outcomes[f"{name}:ok"] += 1
        else:
            self.tally.fail(f"{name}: {response.status_code} {response.text[:200]}")

    async def chat(self) -> None:
        self.expect_json("chat", await self.client.post("/v1/chat/completions", json=self.chat_body(False)))

    async def completion(self) -> None:
        prompts = ["Once upon a time", "The recipe begins"][: self.rng.randint(1, 2)]
        body = {"model": self.model, "prompt": prompts, "max_tokens": self.rng.randint(8, 48)}
        self.expect_json("completion", await self.client.post("/v1/completions", json=body))

    async def image(self) -> None:
        body = {"prompt": f"a drawing of {self.rng.choice(TOPICS)}", "n": 1}
        self.expect_json("image", await self.client.post("/v1/images/generations", json=body, timeout=600))

    async def stream(self, cut_after: int | None = None) -> None:
        name = "stream" if cut_after is None else "stream-cut"
        events = 0
        async with self.client.stream("POST", "/v1/chat/completions", json=self.chat_body(True)) as response:
            if response.status_code == 429:
                self.tally.outcomes[f"{name}:429"] += 1
                return
            if response.status_code != 200:
                self.tally.fail(f"{name}: {response.status_code} {(await response.aread())[:200]!r}")
                return
            last = ""
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                events += 1
                payload = line[5:].strip()
                if payload != "[DONE]" and "error" in json.loads(payload):
                    self.tally.fail(f"{name}: error event {payload[:200]}")
                    return
                last = payload
                if cut_after is not None and events >= cut_after:
                    self.tally.outcomes[f"{name}:ok"] += 1
                    return  # hanging up mid-stream
        if cut_after is None and last != "[DONE]":
            self.tally.fail(f"{name}: ended without [DONE]")
        else:
            self.tally.outcomes[f"{name}:ok"] += 1

    async def abort_plain(self) -> None:
        task = asyncio.create_task(self.client.post("/v1/chat/completions", json=self.chat_body(False)))
        await asyncio.sleep(self.rng.uniform(0.05, 1.0))
        task.cancel()
        try:
            self.expect_json("abort", await task)  # it finished before we left
        except asyncio.CancelledError:
            self.tally.outcomes["abort:ok"] += 1

    async def bad(self) -> None:
        body = self.rng.choice(BAD_BODIES).replace(b"MODEL", self.model.encode())
        response = await self.client.post(
            "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
        error = (
            response.json().get("error")
            if response.headers.get("content-type") == "application/json"
            else None
        )
        if 400 <= response.status_code < 500 and isinstance(error, dict) and "message" in error:
            self.tally.outcomes["bad:4xx"] += 1
        else:
            self.tally.fail(f"bad request got {response.status_code} {response.text[:200]}")

    async def one(self) -> None:
        actions = [
            self.chat,
            self.chat,
            self.completion,
            self.stream,
            self.stream,
            self.abort_plain,
            self.bad,
        ]
        actions.append(lambda: self.stream(cut_after=self.rng.randint(1, 10)))
        if self.images:
            actions.append(self.image)
        action = self.rng.choice(actions)
        started = time.perf_counter()
        try:
            await action()
        except (httpx.HTTPError, json.JSONDecodeError, ValueError) as exc:
            self.tally.fail(f"{getattr(action, '__name__', 'action')}: {type(exc).__name__}: {exc}")
        self.tally.latencies.append(time.perf_counter() - started)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pid", type=int, help="the server's process id, for its memory")
    parser.add_argument("--warmup-minutes", type=float, default=1.0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--max-drift", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(
        base_url=args.base_url, headers=headers, timeout=300, limits=limits
    ) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        # Images are part of the mix when the server has an image model that answers.
        probe = await client.post("/v1/images/generations", json={"prompt": "a circle", "n": 1}, timeout=600)
        images = probe.status_code == 200
        soak = Soak(client, model, images, random.Random(args.seed))
        end = time.monotonic() + args.minutes * 60
        warm_until = time.monotonic() + args.warmup_minutes * 60
        samples: list[tuple[float, int]] = []
        started = time.monotonic()

        async def worker() -> None:
            while time.monotonic() < end:
                await soak.one()

        async def sampler() -> None:
            while time.monotonic() < end:
                if args.pid and (rss := tree_rss_kib(args.pid)) is not None:
                    samples.append((time.monotonic() - started, rss))
                elapsed = time.monotonic() - started
                if int(elapsed) % 60 < 5:
                    done = sum(soak.tally.outcomes.values())
                    print(
                        f"[{elapsed / 60:4.1f} min] {done} requests, {soak.tally.outcomes['unexpected']} "
                        f"unexpected, RSS {samples[-1][1] // 1024 if samples else '?'} MiB",
                        flush=True,
                    )
                await asyncio.sleep(5)

        print(
            f"soak: {args.minutes} min, {args.concurrency} clients, model {model}, images {images}",
            flush=True,
        )
        await asyncio.gather(sampler(), *(worker() for _ in range(args.concurrency)))
        health = await settled_health(client)

    tally = soak.tally
    warm = [rss for t, rss in samples if t >= (warm_until - started)]
    drift = (warm[-1] - warm[0]) / warm[0] if len(warm) >= 2 else None
    report = {
        "minutes": args.minutes,
        "requests": sum(tally.outcomes.values()),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "unexpected_failures": tally.outcomes["unexpected"],
        "first_failures": tally.failures[:10],
        "latency_median_s": round(statistics.median(tally.latencies), 3) if tally.latencies else None,
        "rss_mib_after_warmup": round(warm[0] / 1024, 1) if warm else None,
        "rss_mib_final": round(warm[-1] / 1024, 1) if warm else None,
        "rss_mib_max": round(max(r for _, r in samples) / 1024, 1) if samples else None,
        "rss_drift_pct": round(drift * 100, 2) if drift is not None else None,
        "healthy_after": health.status_code == 200,
        # Once idle, every KV block is free again (cached prefixes count as free): nothing leaked.
        "kv_blocks_returned": kv_returned(health),
    }
    print(json.dumps(report, indent=2))
    ok = report["unexpected_failures"] == 0 and report["healthy_after"] and report["kv_blocks_returned"]
    ok = ok and (drift is None or drift < args.max_drift)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
