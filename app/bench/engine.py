"""`atenea bench engine`: the engine without HTTP, against `transformers.generate()` on the same model.

Both sides get the same B random prompts of P tokens, generate exactly T tokens each (greedy, EOS
ignored) and are timed in the same process on the same device and dtype, so the ratio is fair.
Torch is imported lazily: `atenea bench serve` must not pay for it.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from app.bench import fmt, throughput, write_json
from model_runtime.api import RequestOutput, SamplingParams

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "smollm2-135m-instruct"
Clock = Callable[[], float]


class StepEngine(Protocol):
    """The slice of `model_runtime.engine.Engine` the benchmark drives."""

    def add_request(
        self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> None: ...

    def step(self) -> list[RequestOutput]: ...

    def has_work(self) -> bool: ...


@dataclass(frozen=True)
class RunTiming:
    completion_tokens: int
    seconds: float  # prefill included
    decode_tokens: int  # tokens sampled after every request had its first token
    decode_seconds: float
    steps: int | None = None  # engine steps; None for generate()

    @property
    def tok_s(self) -> float:
        return throughput(self.completion_tokens, self.seconds)

    @property
    def decode_tok_s(self) -> float:
        return throughput(self.decode_tokens, self.decode_seconds)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tok_s": self.tok_s, "decode_tok_s": self.decode_tok_s}


def make_prompts(
    batch_size: int, prompt_len: int, vocab_size: int, seed: int, exclude: Collection[int] = ()
) -> list[list[int]]:
    """B seeded random prompts; `exclude` keeps EOS ids out so nothing reads as an early end."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(batch_size):
        prompt: list[int] = []
        while len(prompt) < prompt_len:
            token = rng.randrange(vocab_size)
            if token not in exclude:
                prompt.append(token)
        prompts.append(prompt)
    return prompts


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def run_engine_batch(
    engine: StepEngine,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    clock: Clock = time.perf_counter,
    on_step: Callable[[int], None] | None = None,
    prefix: str = "bench",
) -> RunTiming:
    """Submits every prompt at once and steps until the engine is idle."""
    ids = [f"{prefix}-{i}" for i in range(len(prompts))]
    started = clock()  # adding requests is timed: a server pays for it too
    for request_id, prompt in zip(ids, prompts, strict=True):
        engine.add_request(request_id, prompt, params)
    without_first_token = set(ids)
    decode_started: float | None = None
    total = decode_tokens = steps = 0
    while engine.has_work():
        outputs = engine.step()
        steps += 1
        now = clock()
        new = 0
        for out in outputs:
            if out.error:
                raise RuntimeError(f"engine failed request {out.request_id}: {out.error}")
            new += len(out.token_ids)
        total += new
        if decode_started is None:
            without_first_token.difference_update(out.request_id for out in outputs)
            if not without_first_token:
                decode_started = now
        else:
            decode_tokens += new
        if on_step is not None:
            on_step(new)
    ended = clock()
    decode_seconds = ended - decode_started if decode_started is not None else 0.0
    return RunTiming(total, ended - started, decode_tokens, decode_seconds, steps)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask, both [B, max_len], padded on the left as generate() expects."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class EngineRun:
    timing: RunTiming
    prompts: list[list[int]]  # the timed prompts, for the baseline to reuse
    device: torch.device  # as the engine resolved "auto"
    dtype: torch.dtype
    pad_id: int
    half_weights: bool  # the engine's CPU linears keep fp16 weights (the baseline has fp32 ones)


def bench_engine(args: argparse.Namespace, path: Path, served_name: str) -> EngineRun:
    """Loads the engine, warms it up and times one batch. The engine is dropped on return."""
    from tqdm import tqdm

    from model_runtime.config import EngineConfig
    from model_runtime.engine import Engine

    config = EngineConfig(
        model_path=path,
        served_model_name=served_name,
        device=args.device,
        dtype=args.dtype,
        max_num_seqs=max(args.batch_size, 64),
    )
    engine = Engine(config)
    eos = engine.tokenizer.eos_token_ids
    prompts = make_prompts(args.batch_size, args.prompt_len, engine.vocab_size, args.seed, eos)
    # Warm-up prompts come from another seed so the prefix cache cannot serve the timed prefill.
    warm = make_prompts(args.batch_size, args.prompt_len, engine.vocab_size, args.seed + 1, eos)
    print("engine: warming up", file=sys.stderr)
    run_engine_batch(
        engine, warm, SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True), prefix="warm"
    )
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    total = args.batch_size * args.max_tokens
    with tqdm(total=total, desc="engine", unit="tok", file=sys.stderr) as bar:
        timing = run_engine_batch(engine, prompts, params, on_step=bar.update)
    pad_id = min(eos) if eos else 0
    return EngineRun(timing, prompts, engine.device, engine.dtype, pad_id, engine.half_weights)


def bench_generate(
    path: Path,
    prompts: list[list[int]],
    max_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    pad_id: int,
) -> RunTiming:
    """transformers' own generate() on a static batch: the peer every user already has."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from model_runtime.models.random_models import has_random_weights

    transformers.logging.set_verbosity_error()  # generation-flag warnings would drown the table
    if has_random_weights(path):
        # Same shapes, its own random weights: the speed comparison is what counts here.
        config = transformers.AutoConfig.from_pretrained(path)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_id))

    def generate(new_tokens: int) -> torch.Tensor:
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # as ignore_eos: every row generates exactly T tokens
                pad_token_id=pad_id,
            )
        _sync(device)
        return out

    print("generate: warming up", file=sys.stderr)
    generate(2)
    # A one-token run times prefill alone, so decode is split out the same way as for the engine.
    started = time.perf_counter()
    generate(1)
    prefill_s = time.perf_counter() - started
    print(f"generate: {len(prompts)} x {max_tokens} tokens", file=sys.stderr)
    started = time.perf_counter()
    out = generate(max_tokens)
    seconds = time.perf_counter() - started
    new_tokens = (out.shape[1] - ids.shape[1]) * len(prompts)
    return RunTiming(new_tokens, seconds, new_tokens - len(prompts), max(seconds - prefill_s, 0.0))


def _timing_line(name: str, t: RunTiming) -> str:
    steps = f", {t.steps} steps" if t.steps is not None else ""
    return (
        f"{name:<10}{t.completion_tokens} tok in {t.seconds:.2f} s = {t.tok_s:.1f} tok/s "
        f"(decode {t.decode_tok_s:.1f} tok/s{steps})"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from model_runtime import resolve_model

    if min(args.batch_size, args.prompt_len, args.max_tokens) < 1:
        raise SystemExit("--batch-size, --prompt-len and --max-tokens must be >= 1")
    torch.set_num_threads(os.cpu_count() or 1)
    resolved = resolve_model(args.model)
    measured = bench_engine(args, resolved.path, resolved.served_name)
    engine_t, device, dtype = measured.timing, measured.device, measured.dtype
    # The engine holds its KV budget (most of a GPU); it must be gone before the baseline loads.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    generate_t = None
    if args.baseline == "generate":
        generate_t = bench_generate(
            resolved.path, measured.prompts, args.max_tokens, device, dtype, measured.pad_id
        )

    weights = " (engine: fp16 weights, fp32 arithmetic)" if measured.half_weights else ""
    print(f"device:   {device.type}, {device_name(device)}, {str(dtype).removeprefix('torch.')}{weights}")
    print(f"model:    {resolved.served_name} ({resolved.path})")
    print(f"work:     batch {args.batch_size} x prompt {args.prompt_len} -> {args.max_tokens} tokens each")
    print(_timing_line("engine:", engine_t))
    speedup = decode_speedup = None
    if generate_t is not None:
        print(_timing_line("generate:", generate_t))
        speedup = ratio(engine_t.tok_s, generate_t.tok_s)
        decode_speedup = ratio(engine_t.decode_tok_s, generate_t.decode_tok_s)
        print(f"engine / generate = {fmt(speedup)}x (decode only {fmt(decode_speedup)}x)")
    if args.json:
        write_json(
            args.json,
            {
                "device": device.type,
                "device_name": device_name(device),
                "dtype": str(dtype).removeprefix("torch."),
                "engine_fp16_weights": measured.half_weights,
                "threads": torch.get_num_threads(),
                "model": resolved.served_name,
                "model_path": str(resolved.path),
                "batch_size": args.batch_size,
                "prompt_len": args.prompt_len,
                "max_tokens": args.max_tokens,
                "seed": args.seed,
                "engine": engine_t.as_dict(),
                "generate": generate_t.as_dict() if generate_t is not None else None,
                "engine_over_generate": speedup,
                "decode_engine_over_generate": decode_speedup,
                "torch": torch.__version__,
            },
        )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="built-in name, HF folder or .gguf")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences generated together")
    parser.add_argument("--prompt-len", type=int, default=32, help="tokens in each random prompt")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per sequence")
    parser.add_argument(
        "--baseline",
        choices=("generate", "none"),
        default="generate",
        help="also time transformers generate() on the same work, or nothing",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="weight format, as `atenea serve --dtype`",
    )
    parser.add_argument("--seed", type=int, default=0, help="for the random prompts")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results here")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("engine", help="the engine in-process vs transformers generate()")
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atenea bench engine")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
