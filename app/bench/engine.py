"""`atenea bench engine`: the engine without HTTP, against transformers on the same model.

Both sides get the same random prompts, generate exactly the same number of tokens per request
(EOS ignored) and are timed in the same process on the same device and dtype, so the ratio is fair.
Baselines: `generate()` on a static batch, and `generate_batch()`, transformers' own continuous
batching. Workloads: `custom` (B prompts of P tokens, T new tokens each, greedy), `w1` (batch-1
decode: 128 -> 256, greedy), `w2` (offline throughput: 128 requests, prompt and output lengths
uniform in [64, 512], temperature 0.8), `w3` (the engine side of the HTTP workload: 64 streams of
32 -> 256 tokens, greedy, no baseline) and `prefix` (`atenea bench prefix` on the same engine).
Several workloads in one run share one engine and one baseline model: loading a 7B model twice
costs more than some of its workloads. Each run also reports the fraction of the decode roofline
reached: the bytes a step must read (weights once, plus every running sequence's KV) over the
measured copy bandwidth of the device.
Torch is imported lazily: `atenea bench serve` must not pay for it.
"""

from __future__ import annotations

import argparse
import functools
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

    from model_runtime.engine import Engine

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
    lengths: Sequence[int], vocab_size: int, seed: int | str, exclude: Collection[int] = ()
) -> list[list[int]]:
    """Seeded random prompts. Prompts from one seed share their first tokens, so runs that share an
    engine (and its prefix cache) need seeds of their own; a str seed names its own stream (an int
    seed n gives the same stream as -n)."""
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
    seed: int  # of its prompts' tokens: workloads sharing an engine must not share cached prefixes


def make_workload(name: str, args: argparse.Namespace, index: int = 0) -> Workload:
    """The named workload; `index` is its place in the run, which keeps its prompts its own."""
    seed = args.seed + 1000 * index
    if name == "w1":
        return Workload("w1", [128], [256], 0.0, ("generate",), seed)
    if name == "w2":
        rng = random.Random(args.seed)
        n = args.requests
        prompt_lens = [rng.randint(64, 512) for _ in range(n)]
        output_lens = [rng.randint(64, 512) for _ in range(n)]
        return Workload("w2", prompt_lens, output_lens, 0.8, ("generate_batch",), seed)
    if name == "w3":
        # W3's streams as the engine alone sees them, to set beside `atenea bench serve -c 64`.
        return Workload("w3", [32] * 64, [256] * 64, 0.0, (), seed)
    b = args.batch_size
    return Workload("custom", [args.prompt_len] * b, [args.max_tokens] * b, 0.0, ("generate",), seed)


@dataclass(frozen=True)
class EngineRun:
    work: Workload
    timing: RunTiming
    prompts: list[list[int]]  # the timed prompts, for the baselines to reuse
    decode_bytes: float  # weight and KV bytes the decode phase had to read
    decode_seconds: float  # the decode phase's steps, timed one by one
    cache_hit_tokens: int  # prompt tokens the prefix cache served in the timed run (0 is fair)
    profile: dict[str, Any] | None  # `--profile`: a profile of decode steps (see step_profile.py)


@dataclass(frozen=True)
class EngineFacts:
    """What the benchmark reports about the engine itself, the same for each of its workloads."""

    device: torch.device  # as the engine resolved "auto"
    dtype: torch.dtype
    pad_id: int
    half_weights: bool  # the engine's CPU linears keep fp16 weights (the baseline has fp32 ones)
    weights: str  # the formats of the engine's CPU linears ("Q4_1+Q8_0"), "" elsewhere
    overlap_steps: bool  # each step launched before the previous one's tokens were read
    fused_kernels: bool  # the GPU's fused layer kernels ran (see kernels/fused_layer.py)


def load_engine(
    args: argparse.Namespace, works: Sequence[Workload], path: Path, served_name: str, min_len: int = 0
) -> tuple[Engine, float]:
    """The engine sized for every workload (and sequences of `min_len` tokens), warmed up, and the
    device's copy bandwidth, measured before the engine takes its memory."""
    from app.bench.roofline import copy_bandwidth
    from model_runtime.config import EngineConfig
    from model_runtime.engine import Engine, resolve_device

    most = max((len(w.prompt_lens) for w in works), default=1)
    lengths = (p + o for w in works for p, o in zip(w.prompt_lens, w.output_lens, strict=True))
    longest = max(lengths, default=0)
    config = EngineConfig(
        model_path=path,
        served_model_name=served_name,
        device=args.device,
        dtype=args.dtype,
        max_num_seqs=max(most, 64) if args.max_num_seqs is None else args.max_num_seqs,
        max_model_len=max(longest, min_len) + 16,
        enforce_eager=args.enforce_eager,
        overlap_steps=args.overlap_steps,
    )
    bandwidth = copy_bandwidth(resolve_device(config))
    engine = Engine(config)
    eos = engine.tokenizer.eos_token_ids
    widest = max(works, key=lambda w: len(w.prompt_lens), default=None)
    warm_lens = widest.prompt_lens[:64] if widest is not None else [min(min_len, 512) or 32]
    # Warm-up prompts come from a seed of their own, so the prefix cache cannot serve a timed prefill.
    warm = prompts_of_lengths(warm_lens, engine.vocab_size, f"warm-{args.seed}", eos)
    print("engine: warming up", file=sys.stderr)
    run_engine_batch(
        engine, warm, SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True), prefix="warm"
    )
    return engine, bandwidth


def engine_facts(engine: Engine) -> EngineFacts:
    import torch

    from model_runtime.kernels.fused_layer import fused_kernels_enabled
    from model_runtime.models.cpu_linear import weight_formats

    eos = engine.tokenizer.eos_token_ids
    return EngineFacts(
        engine.device,
        engine.dtype,
        min(eos) if eos else 0,
        engine.half_weights,
        "+".join(weight_formats(engine.model)),
        engine.overlap_steps,
        fused_kernels_enabled(torch.empty(0, device=engine.device)),
    )


def time_workload(engine: Engine, args: argparse.Namespace, work: Workload) -> EngineRun:
    """Times the workload on the engine, then profiles it if `--profile` asks."""
    from tqdm import tqdm

    from app.bench.roofline import kv_bytes_per_token, weight_bytes

    eos = engine.tokenizer.eos_token_ids
    prompts = prompts_of_lengths(work.prompt_lens, engine.vocab_size, work.seed, eos)
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

    hits_before = engine.stats().prefix_cache_hit_tokens
    with tqdm(total=sum(work.output_lens), desc=f"engine {work.name}", unit="tok", file=sys.stderr) as bar:
        timing = run_engine_batch(
            engine, prompts, params, on_step=bar.update, on_decode_step=on_decode_step, prefix=work.name
        )
    hits = engine.stats().prefix_cache_hit_tokens - hits_before
    profile = None
    if args.profile:
        from app.bench.step_profile import profile_decode_steps

        print(f"engine: profiling {args.profile} decode steps of {work.name}", file=sys.stderr)
        profile = profile_decode_steps(engine, prompts, args.profile, work.temperature)
    return EngineRun(work, timing, prompts, read["bytes"], read["seconds"], hits, profile)


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
    model: Any, prompts: list[list[int]], max_tokens: int, device: torch.device, pad_id: int
) -> RunTiming:
    """transformers' own generate() on a static batch: the peer every user already has."""
    import torch

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

    names = list(dict.fromkeys(args.workload))  # each once, in the order given
    if min(args.batch_size, args.prompt_len, args.max_tokens, args.requests) < 1:
        raise SystemExit("--batch-size, --prompt-len, --max-tokens and --requests must be >= 1")
    if min(args.prefix_len, args.question_len, args.rounds) < 1:
        raise SystemExit("--prefix-len, --question-len and --rounds must be >= 1")
    if args.json and len(names) > 1 and "{workload}" not in args.json:
        raise SystemExit("with several workloads, --json needs {workload} in its path: one file each")
    torch.set_num_threads(os.cpu_count() or 1)
    works = [make_workload(name, args, i) for i, name in enumerate(names) if name != "prefix"]
    resolved = resolve_model(args.model)
    prefix_len = args.prefix_len + args.question_len if "prefix" in names else 0
    engine, bandwidth = load_engine(args, works, resolved.path, resolved.served_name, min_len=prefix_len)
    facts = engine_facts(engine)
    device, dtype = facts.device, facts.dtype
    weights = f" (engine: {facts.weights} weights, fp32 arithmetic)" if facts.weights else ""
    print(f"device:   {device.type}, {device_name(device)}, {str(dtype).removeprefix('torch.')}{weights}")
    print(f"model:    {resolved.served_name} ({resolved.path})")
    common = {
        "device": device.type,
        "device_name": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "engine_fp16_weights": facts.half_weights,
        "threads": torch.get_num_threads(),
        "model": resolved.served_name,
        "model_path": str(resolved.path),
        "seed": args.seed,
        "enforce_eager": args.enforce_eager,
        "overlap_steps": facts.overlap_steps,
        "fused_kernels": facts.fused_kernels,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "torch": torch.__version__,
    }

    def save(name: str, figures: dict[str, Any]) -> None:
        # Written as soon as they exist: a run cut short by a time limit keeps what it measured.
        if args.json:
            write_json(args.json.replace("{workload}", name), figures)

    measured: list[tuple[EngineRun, dict[str, Any]]] = []
    for work in works:
        run_ = time_workload(engine, args, work)
        report = {**common, **engine_report(run_, bandwidth)}
        save(work.name, report)
        measured.append((run_, report))
    if "prefix" in names:
        from app.bench.prefix import describe, time_prefix

        prefix = time_prefix(
            engine, args.prefix_len, args.question_len, args.rounds, args.seed, profile=bool(args.profile)
        )
        print("\n".join(describe(prefix)))
        save("prefix", prefix)
    # The engine holds its KV budget (most of a GPU); it must be gone before the baselines load.
    del engine
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    from app.bench.baselines import load_reference

    # One transformers model for every workload's baselines, loaded when the first needs it.
    reference = functools.cache(lambda: load_reference(resolved.path, device, dtype))
    for run_, report in measured:
        results = run_baselines(args, run_, facts, reference)
        if results:
            print(f"work:     {run_.work.name}, against transformers")
        ratios: dict[str, float | None] = {}
        for name, timing in results.items():
            print(_timing_line(f"{name}:", timing))
            ratios[name] = ratio(run_.timing.tok_s, timing.tok_s)
            print(f"engine / {name} = {fmt(ratios[name])}x")
        report["baselines"] = {name: t.as_dict() for name, t in results.items()}
        report["engine_over_baseline"] = ratios
        save(run_.work.name, report)
    return 0


def run_baselines(
    args: argparse.Namespace, measured: EngineRun, facts: EngineFacts, reference: Callable[[], Any]
) -> dict[str, RunTiming]:
    """The workload's transformers baselines on its own prompts; `reference()` gives the model."""
    import torch

    from app.bench.baselines import bench_generate_batch

    work = measured.work
    results: dict[str, RunTiming] = {}
    for name in {"default": work.baselines, "none": ()}.get(args.baseline, (args.baseline,)):
        model = reference()
        if name == "generate":
            if len(set(work.output_lens)) != 1:
                raise SystemExit("the generate baseline needs one output length for every request")
            prompts, tokens = measured.prompts, work.output_lens[0]
            results[name] = bench_generate(model, prompts, tokens, facts.device, facts.pad_id)
        else:
            results[name] = bench_generate_batch(model, measured.prompts, work.output_lens, work.temperature)
        gc.collect()
        if facts.device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def engine_report(measured: EngineRun, bandwidth: float) -> dict[str, Any]:
    """Prints the engine's figures on the workload and returns them for the JSON."""
    work, engine_t = measured.work, measured.timing
    roofline = None
    if measured.decode_seconds > 0:
        roofline = measured.decode_bytes / bandwidth / measured.decode_seconds
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
    return {
        "workload": work.name,
        "requests": len(work.prompt_lens),
        "prompt_tokens": sum(work.prompt_lens),
        "output_tokens": sum(work.output_lens),
        "temperature": work.temperature,
        "profile": measured.profile,
        "engine": engine_t.as_dict(),
        "cache_hit_tokens": measured.cache_hit_tokens,
        "decode_roofline_fraction": roofline,
        "baselines": {},
        "engine_over_baseline": {},
    }


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
    from app.bench.prefix import add_prefix_arguments  # prefix.py builds on this module

    add_model_arguments(parser)
    parser.add_argument(
        "--workload",
        nargs="+",
        choices=("custom", "w1", "w2", "w3", "prefix"),
        default=["custom"],
        help="one or more, sharing one engine: custom: the sizes below; w1: batch-1 decode 128 -> 256 "
        "greedy; w2: --requests requests, prompt and output lengths uniform in [64, 512], temperature "
        "0.8; w3: 64 streams of 32 -> 256 tokens, greedy (the engine side of `bench serve -c 64`); "
        "prefix: TTFT with a cached prefix against cold, as `atenea bench prefix`",
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
    add_prefix_arguments(parser)
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write the results here; with several workloads, {workload} in PATH names each file",
    )


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
