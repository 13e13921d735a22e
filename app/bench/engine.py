"""`atenea bench engine`: the engine without HTTP, against transformers on the same model.

Both sides get the same random prompts, generate exactly the same number of tokens per request
(EOS ignored) and are timed in the same process on the same device and dtype, so the ratio is fair.
Baselines: `generate()` on a static batch, and `generate_batch()`, transformers' own continuous
batching. Workloads: `custom` (B prompts of P tokens, T new tokens each, greedy), `w1` (batch-1
decode: 128 -> 256, greedy) and `w2` (offline throughput: 128 requests, prompt and output lengths
uniform in [64, 512], temperature 0.8). Each run also reports the fraction of the decode roofline
reached: the bytes a step must read (weights once, plus every running sequence's KV) over the
measured copy bandwidth of the device.
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
    return prompts_of_lengths([prompt_len] * batch_size, vocab_size, seed, exclude)


def prompts_of_lengths(
    lengths: Sequence[int], vocab_size: int, seed: int, exclude: Collection[int] = ()
) -> list[list[int]]:
    rng = random.Random(seed)
    prompts = []
    for length in lengths:
        prompt: list[int] = []
        while len(prompt) < length:
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
    params: SamplingParams | Sequence[SamplingParams],
    clock: Clock = time.perf_counter,
    on_step: Callable[[int], None] | None = None,
    prefix: str = "bench",
    on_decode_step: Callable[[float], None] | None = None,
) -> RunTiming:
    """Submits every prompt at once (one `params` for all, or one each) and steps until idle."""
    ids = [f"{prefix}-{i}" for i in range(len(prompts))]
    each = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    started = clock()  # adding requests is timed: a server pays for it too
    for request_id, prompt, p in zip(ids, prompts, each, strict=True):
        engine.add_request(request_id, prompt, p)
    without_first_token = set(ids)
    decode_started: float | None = None
    total = decode_tokens = steps = 0
    previous = started
    while engine.has_work():
        outputs = engine.step()
        steps += 1
        now = clock()
        if decode_started is not None and on_decode_step is not None:
            on_decode_step(now - previous)  # a step of the decode phase, which the roofline covers
        previous = now
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
class Workload:
    name: str
    prompt_lens: list[int]
    output_lens: list[int]
    temperature: float
    baselines: tuple[str, ...]  # the baselines it runs unless --baseline says otherwise


def make_workload(args: argparse.Namespace) -> Workload:
    if args.workload == "w1":
        return Workload("w1", [128], [256], 0.0, ("generate",))
    if args.workload == "w2":
        rng = random.Random(args.seed)
        n = args.requests
        prompt_lens = [rng.randint(64, 512) for _ in range(n)]
        output_lens = [rng.randint(64, 512) for _ in range(n)]
        return Workload("w2", prompt_lens, output_lens, 0.8, ("generate_batch",))
    b = args.batch_size
    return Workload("custom", [args.prompt_len] * b, [args.max_tokens] * b, 0.0, ("generate",))


@dataclass(frozen=True)
class EngineRun:
    timing: RunTiming
    prompts: list[list[int]]  # the timed prompts, for the baselines to reuse
    device: torch.device  # as the engine resolved "auto"
    dtype: torch.dtype
    pad_id: int
    half_weights: bool  # the engine's CPU linears keep fp16 weights (the baseline has fp32 ones)
    weights: str  # the formats of the engine's CPU linears ("Q4_1+Q8_0"), "" elsewhere
    decode_bytes: float  # weight and KV bytes the decode phase had to read
    decode_seconds: float  # the decode phase's steps, timed one by one
    overlap_steps: bool  # each step launched before the previous one's tokens were read
    fused_kernels: bool  # the GPU's fused layer kernels ran (see kernels/fused_layer.py)
    profile: dict[str, Any] | None  # `--profile`: a profile of decode steps (see step_profile.py)


def bench_engine(args: argparse.Namespace, work: Workload, path: Path, served_name: str) -> EngineRun:
    """Loads the engine, warms it up and times the workload. The engine is dropped on return."""
    import torch
    from tqdm import tqdm

    from app.bench.roofline import kv_bytes_per_token, weight_bytes
    from model_runtime.config import EngineConfig
    from model_runtime.engine import Engine
    from model_runtime.kernels.fused_layer import fused_kernels_enabled
    from model_runtime.models.cpu_linear import weight_formats

    config = EngineConfig(
        model_path=path,
        served_model_name=served_name,
        device=args.device,
        dtype=args.dtype,
        max_num_seqs=max(len(work.prompt_lens), 64) if args.max_num_seqs is None else args.max_num_seqs,
        max_model_len=max(p + o for p, o in zip(work.prompt_lens, work.output_lens, strict=True)) + 16,
        enforce_eager=args.enforce_eager,
        overlap_steps=args.overlap_steps,
    )
    engine = Engine(config)
    eos = engine.tokenizer.eos_token_ids
    prompts = prompts_of_lengths(work.prompt_lens, engine.vocab_size, args.seed, eos)
    # Warm-up prompts come from another seed so the prefix cache cannot serve the timed prefill.
    warm = prompts_of_lengths(work.prompt_lens[:64], engine.vocab_size, args.seed + 1, eos)
    print("engine: warming up", file=sys.stderr)
    run_engine_batch(
        engine, warm, SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True), prefix="warm"
    )
    params = [
        SamplingParams(temperature=work.temperature, max_tokens=n, ignore_eos=True) for n in work.output_lens
    ]
    shape = engine.model.shape
    element = 2 if engine.half_weights else torch_element_size(engine.dtype)
    step_weights = packed_linear_bytes(engine.model) or weight_bytes(shape, element)
    per_token = kv_bytes_per_token(shape, torch_element_size(engine.kv_dtype))
    read = {"bytes": 0.0, "seconds": 0.0}

    def on_decode_step(seconds: float) -> None:
        context = sum(seq.num_tokens for seq in engine.scheduler.running)
        read["bytes"] += step_weights + per_token * context
        read["seconds"] += seconds

    with tqdm(total=sum(work.output_lens), desc="engine", unit="tok", file=sys.stderr) as bar:
        timing = run_engine_batch(engine, prompts, params, on_step=bar.update, on_decode_step=on_decode_step)
    pad_id = min(eos) if eos else 0
    profile = None
    if args.profile:
        from app.bench.step_profile import profile_decode_steps

        print(f"engine: profiling {args.profile} decode steps", file=sys.stderr)
        profile = profile_decode_steps(engine, prompts, args.profile, work.temperature)
    return EngineRun(
        timing,
        prompts,
        engine.device,
        engine.dtype,
        pad_id,
        engine.half_weights,
        "+".join(weight_formats(engine.model)),
        read["bytes"],
        read["seconds"],
        engine.overlap_steps,
        fused_kernels_enabled(torch.empty(0, device=engine.device)),
        profile,
    )


def packed_linear_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads from linear layers held by the CPU kernels (Q4_1, Q8_0 or fp16
    tiles, with their block scales); 0 when no layer is."""
    from model_runtime.models.cpu_linear import CpuLinear

    total = 0
    for module in model.modules():
        if isinstance(module, CpuLinear) and module.blockq is not None:
            packed = module.blockq
            total += packed.q.nbytes + packed.d.nbytes + packed.m.nbytes
    return total


def torch_element_size(dtype: torch.dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


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

    from app.bench.baselines import load_reference

    model = load_reference(path, device, dtype)
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

    from app.bench.baselines import bench_generate_batch
    from app.bench.roofline import copy_bandwidth
    from model_runtime import resolve_model

    if min(args.batch_size, args.prompt_len, args.max_tokens, args.requests) < 1:
        raise SystemExit("--batch-size, --prompt-len, --max-tokens and --requests must be >= 1")
    torch.set_num_threads(os.cpu_count() or 1)
    work = make_workload(args)
    resolved = resolve_model(args.model)
    measured = bench_engine(args, work, resolved.path, resolved.served_name)
    engine_t, device, dtype = measured.timing, measured.device, measured.dtype
    # The engine holds its KV budget (most of a GPU); it must be gone before the baselines load.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    bandwidth = copy_bandwidth(device)
    roofline = None
    if measured.decode_seconds > 0:
        roofline = measured.decode_bytes / bandwidth / measured.decode_seconds
    baselines = {"default": work.baselines, "none": ()}.get(args.baseline, (args.baseline,))
    results: dict[str, RunTiming] = {}
    for name in baselines:
        if name == "generate":
            if len(set(work.output_lens)) != 1:
                raise SystemExit("the generate baseline needs one output length for every request")
            results[name] = bench_generate(
                resolved.path, measured.prompts, work.output_lens[0], device, dtype, measured.pad_id
            )
        else:
            results[name] = bench_generate_batch(
                resolved.path, measured.prompts, work.output_lens, work.temperature, device, dtype
            )
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    weights = f" (engine: {measured.weights} weights, fp32 arithmetic)" if measured.weights else ""
    print(f"device:   {device.type}, {device_name(device)}, {str(dtype).removeprefix('torch.')}{weights}")
    print(f"model:    {resolved.served_name} ({resolved.path})")
    print(
        f"work:     {work.name}: {len(work.prompt_lens)} requests, prompts {min(work.prompt_lens)}-"
        f"{max(work.prompt_lens)} tokens -> {min(work.output_lens)}-{max(work.output_lens)} tokens, "
        f"temperature {work.temperature}"
    )
    print(_timing_line("engine:", engine_t))
    print(
        f"roofline: {fmt(roofline and 100 * roofline, 1)}% of the decode roofline "
        f"(copy bandwidth {bandwidth / 1e9:.0f} GB/s)"
    )
    if measured.profile is not None:
        from app.bench.step_profile import describe

        print("\n".join(describe(measured.profile)))
    ratios: dict[str, float | None] = {}
    for name, timing in results.items():
        print(_timing_line(f"{name}:", timing))
        ratios[name] = ratio(engine_t.tok_s, timing.tok_s)
        print(f"engine / {name} = {fmt(ratios[name])}x")
    if args.json:
        write_json(
            args.json,
            {
                "workload": work.name,
                "device": device.type,
                "device_name": device_name(device),
                "dtype": str(dtype).removeprefix("torch."),
                "engine_fp16_weights": measured.half_weights,
                "threads": torch.get_num_threads(),
                "model": resolved.served_name,
                "model_path": str(resolved.path),
                "requests": len(work.prompt_lens),
                "prompt_tokens": sum(work.prompt_lens),
                "output_tokens": sum(work.output_lens),
                "temperature": work.temperature,
                "seed": args.seed,
                "enforce_eager": args.enforce_eager,
                "overlap_steps": measured.overlap_steps,
                "fused_kernels": measured.fused_kernels,
                "profile": measured.profile,
                "engine": engine_t.as_dict(),
                "copy_bandwidth_gb_s": bandwidth / 1e9,
                "decode_roofline_fraction": roofline,
                "baselines": {name: t.as_dict() for name, t in results.items()},
                "engine_over_baseline": ratios,
                "torch": torch.__version__,
            },
        )
    return 0


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What the in-process benchmarks (`engine`, `prefix`) load, and where."""
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="built-in name, HF folder, .gguf or random:NAME"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="weight format, as `atenea serve --dtype`",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--workload",
        choices=("custom", "w1", "w2"),
        default="custom",
        help="custom: the sizes below; w1: batch-1 decode 128 -> 256 greedy; w2: --requests requests, "
        "prompt and output lengths uniform in [64, 512], temperature 0.8",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="custom: sequences generated together")
    parser.add_argument("--prompt-len", type=int, default=32, help="custom: tokens in each random prompt")
    parser.add_argument("--max-tokens", type=int, default=64, help="custom: tokens generated per sequence")
    parser.add_argument("--requests", type=int, default=128, help="w2: number of requests")
    parser.add_argument(
        "--baseline",
        choices=("default", "generate", "generate_batch", "none"),
        default="default",
        help="transformers baseline timed on the same work: generate() (static batch), generate_batch() "
        "(continuous batching), none; default: generate for custom and w1, generate_batch for w2",
    )
    parser.add_argument("--max-num-seqs", type=int, default=None, help="engine: sequences at once")
    parser.add_argument("--enforce-eager", action="store_true", help="engine on CUDA: no CUDA graphs")
    parser.add_argument(
        "--overlap-steps",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="engine: launch each step before reading the previous one's tokens (default: on CUDA)",
    )
    parser.add_argument("--seed", type=int, default=0, help="for the random prompts and lengths")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="after the timed run, profile this many decode steps at the workload's batch: kernels, "
        "device time and eager torch ops a step",
    )
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
