"""`atenea bench prefix`: time to first token of a request whose long prefix is cached, against the
same request cold.

Each round takes a fresh random prefix (1,000 tokens by default: a long system prompt, or the
earlier turns of a chat) and sends it twice, each time with a different random question after it:
the first request computes everything, the second finds the prefix's full KV blocks in the prefix
cache and computes only the rest. Both ask for one token, so the time from submitting the request
to its end is its time to first token. The engine runs in-process, as in `bench engine`; every
round's prefix is new, so no cold request is served from the cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.bench import fmt, write_json
from app.bench.engine import add_model_arguments, device_name, prompts_of_lengths, run_engine_batch
from model_runtime.api import SamplingParams

if TYPE_CHECKING:
    from model_runtime.engine import Engine


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Loads the engine and times the rounds; returns the figures."""
    from model_runtime import resolve_model
    from model_runtime.config import EngineConfig
    from model_runtime.engine import Engine

    resolved = resolve_model(args.model)
    engine = Engine(
        EngineConfig(
            model_path=resolved.path,
            served_model_name=resolved.served_name,
            device=args.device,
            dtype=args.dtype,
            max_model_len=args.prefix_len + args.question_len + 16,
            # Every timed step is a prefill step; graphs serve only decode-only steps.
            enforce_eager=True,
        )
    )
    return time_prefix(engine, args.prefix_len, args.question_len, args.rounds, args.seed)


def time_prefix(
    engine: Engine, prefix_len: int, question_len: int, rounds: int, seed: int, profile: bool = False
) -> dict[str, Any]:
    """Warms the engine up and times the rounds. The prompts come from str seeds of their own
    ("prefix-SEED-ROUND"), which no other prompts of the benchmarks use: an engine that ran other
    work keeps its cache, and no cold request may find anything there. With `profile`, one more
    round runs under torch's profiler (see `step_profile.profile_request`)."""
    eos = engine.tokenizer.eos_token_ids
    one_token = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    print("prefix: warming up", file=sys.stderr)
    warm_lens = [prefix_len + question_len, question_len]
    for warm in prompts_of_lengths(warm_lens, engine.vocab_size, f"prefix-{seed}-warm", eos):
        run_engine_batch(engine, [warm], one_token, prefix="warm")
    cold: list[float] = []
    cached: list[float] = []
    hits: list[int] = []
    cold_hits: list[int] = []
    for i in range(rounds):
        prefix, first, second = prompts_of_lengths(
            [prefix_len, question_len, question_len], engine.vocab_size, f"prefix-{seed}-{i}", eos
        )
        hit_before = engine.stats().prefix_cache_hit_tokens
        cold.append(run_engine_batch(engine, [prefix + first], one_token, prefix=f"cold{i}").seconds)
        hit_cold = engine.stats().prefix_cache_hit_tokens
        cached.append(run_engine_batch(engine, [prefix + second], one_token, prefix=f"cached{i}").seconds)
        cold_hits.append(hit_cold - hit_before)
        hits.append(engine.stats().prefix_cache_hit_tokens - hit_cold)
    cold_ms, cached_ms = 1000 * statistics.median(cold), 1000 * statistics.median(cached)
    profiles = None
    if profile:
        from app.bench.step_profile import profile_request

        prefix, first, second = prompts_of_lengths(
            [prefix_len, question_len, question_len], engine.vocab_size, f"prefix-{seed}-profile", eos
        )
        profiles = {
            "cold": profile_request(engine, prefix + first, "profile-cold"),
            "cached": profile_request(engine, prefix + second, "profile-cached"),
        }
    return {
        "device": engine.device.type,
        "device_name": device_name(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "model": engine.config.served_model_name,
        "prefix_tokens": prefix_len,
        "question_tokens": question_len,
        "rounds": rounds,
        "cold_ttft_ms": [1000 * s for s in cold],
        "cached_ttft_ms": [1000 * s for s in cached],
        "cold_ttft_median_ms": cold_ms,
        "cached_ttft_median_ms": cached_ms,
        "cold_over_cached": cold_ms / cached_ms if cached_ms > 0 else None,
        "cache_hit_tokens": hits,  # per cached request: prompt tokens the cache served
        "cold_cache_hit_tokens": cold_hits,  # per cold request: 0, or it was not cold
        "profile": profiles,
    }


def describe(figures: dict[str, Any]) -> list[str]:
    """The printed report of `time_prefix`'s figures."""
    hits, cold_hits = figures["cache_hit_tokens"], figures["cold_cache_hit_tokens"]
    return [
        f"work:     {figures['rounds']} rounds of a {figures['prefix_tokens']}-token prefix and a "
        f"{figures['question_tokens']}-token question, one token each",
        f"cold:     TTFT median {fmt(figures['cold_ttft_median_ms'], 1)} ms "
        f"({min(cold_hits)}-{max(cold_hits)} prompt tokens from the cache)",
        f"cached:   TTFT median {fmt(figures['cached_ttft_median_ms'], 1)} ms "
        f"({min(hits)}-{max(hits)} prompt tokens from the cache)",
        f"cold / cached = {fmt(figures['cold_over_cached'])}x",
    ] + [
        f"profile:  {name} request {p['request_ms']:.1f} ms in {p['steps']} steps, device busy "
        f"{p['device_busy_ms_per_step'] * p['steps']:.1f} ms, host in the model runner "
        f"{p['runner_host_ms']:.1f} ms, "
        f"{p['kernels_per_step'] * p['steps']:.0f} kernels, "
        f"most host time in {', '.join(op['name'] for op in p['top_host_ops'][:3])}"
        for name, p in (figures.get("profile") or {}).items()
    ]


def run(args: argparse.Namespace) -> int:
    import torch

    if min(args.prefix_len, args.question_len, args.rounds) < 1:
        raise SystemExit("--prefix-len, --question-len and --rounds must be >= 1")
    torch.set_num_threads(os.cpu_count() or 1)
    figures = measure(args)
    print(f"device:   {figures['device']}, {figures['device_name']}, {figures['dtype']}")
    print(f"model:    {figures['model']}")
    print("\n".join(describe(figures)))
    if args.json:
        write_json(args.json, figures)
    return 0


def add_prefix_arguments(parser: argparse.ArgumentParser) -> None:
    """The prefix measurement's own flags, which `bench engine --workload prefix` takes too."""
    parser.add_argument("--prefix-len", type=int, default=1000, help="prefix: tokens of the shared prefix")
    parser.add_argument("--question-len", type=int, default=32, help="prefix: tokens after the prefix")
    parser.add_argument("--rounds", type=int, default=5, help="prefix: prefixes timed, cold then cached")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_prefix_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="for the random prompts")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results here")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prefix", help="TTFT with a long prefix cached vs the same request cold")
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atenea bench prefix")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
