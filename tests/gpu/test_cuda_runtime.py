"""The runtime on a CUDA device: the Triton decode kernel, CUDA graphs, parity with transformers,
and a loaded engine that never produces NaN/inf. Run by scripts/gpu_check.sh (`pytest -m gpu`)."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from model_runtime.api import SamplingParams
from model_runtime.in_flight import CarriedTokens
from model_runtime.kernels.paged_decode import paged_decode, paged_decode_reference
from model_runtime.kernels.paged_prefill import paged_prefill, paged_prefill_reference
from model_runtime.kv_cache import BlockManager
from model_runtime.model_runner import ModelRunner
from model_runtime.models.loader import build_model
from model_runtime.scheduler import Batch, ScheduledChunk
from model_runtime.sequence import Sequence
from tests.model_runtime.test_block_table_decode import random_cache
from tests.model_runtime.test_paged_prefill import random_chunks

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
BF16_LOGIT_TOL = 0.1  # bf16 keeps 8 bits of mantissa: logits of magnitude ~5 move by a few 1e-2


def tiny_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=257,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )


def native_and_reference(dtype: torch.dtype, cuda_graphs: bool) -> tuple[ModelRunner, LlamaForCausalLM]:
    torch.manual_seed(0)
    config = tiny_config()
    reference = LlamaForCausalLM(config).eval().to(CUDA)
    model = build_model(config, CUDA, dtype)
    model.load_hf_weights(reference.state_dict().items())
    runner = ModelRunner(model, num_blocks=64, block_size=16, max_model_len=512, max_num_seqs=8,
                         cuda_graphs=cuda_graphs)  # fmt: skip
    return runner, reference


def greedy(runner: ModelRunner, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Prefill each prompt, then decode all of them together, argmax every step."""
    blocks = BlockManager(runner.num_blocks, runner.block_size)
    seqs = []
    for i, prompt in enumerate(prompts):
        seq = Sequence(f"r{i}", list(prompt), len(prompt), SamplingParams(), max_total_tokens=512)
        blocks.allocate(seq, len(prompt))
        logits, _ = runner.run(Batch(prefills=[ScheduledChunk(seq, 0, len(prompt))]))
        seq.token_ids.append(int(logits[0].argmax()))
        seqs.append(seq)
    for _ in range(new_tokens - 1):
        for seq in seqs:
            blocks.allocate(seq, seq.num_tokens)
        logits, _ = runner.run(Batch(decodes=[ScheduledChunk(s, s.num_tokens - 1, 1) for s in seqs]))
        assert torch.isfinite(logits).all()
        for seq, token in zip(seqs, logits.argmax(dim=-1).tolist(), strict=True):
            seq.token_ids.append(token)
    return [s.token_ids[s.num_prompt_tokens :] for s in seqs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(32, 32, 128), (32, 8, 128), (9, 3, 64)])
def test_kernel_matches_reference(dtype: torch.dtype, heads: int, kv_heads: int, dim: int) -> None:
    lengths = [1, 15, 16, 17, 64, 65, 300, 1000]
    q, keys, values, tables, lens = (t.to(CUDA) for t in random_cache(heads, kv_heads, dim, lengths, seed=2))
    q, keys, values = q.to(dtype), keys.to(dtype), values.to(dtype)
    out = paged_decode(q, keys, values, tables, lens, 16, dim**-0.5)
    expected = paged_decode_reference(q.float(), keys.float(), values.float(), tables, lens, 16, dim**-0.5)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=0)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_greedy_output_equals_transformers_fp32(cuda_graphs: bool) -> None:
    runner, reference = native_and_reference(torch.float32, cuda_graphs)
    assert (runner.graphs is not None) == cuda_graphs
    prompts = [torch.randint(0, 257, (n,)).tolist() for n in (5, 23, 40)]
    ours = greedy(runner, prompts, 64)
    for prompt, tokens in zip(prompts, ours, strict=True):
        with torch.inference_mode():
            out = reference.generate(
                torch.tensor([prompt], device=CUDA), do_sample=False, max_new_tokens=64, min_new_tokens=64
            )
        assert tokens == out[0, len(prompt) :].tolist()


def test_bf16_logits_agree_with_fp32_reference_within_tolerance() -> None:
    runner, reference = native_and_reference(torch.bfloat16, cuda_graphs=True)
    prompt = torch.randint(0, 257, (37,)).tolist()
    blocks = BlockManager(runner.num_blocks, runner.block_size)
    seq = Sequence("r", list(prompt), len(prompt), SamplingParams(), max_total_tokens=512)
    blocks.allocate(seq, len(prompt))
    logits, _ = runner.run(Batch(prefills=[ScheduledChunk(seq, 0, len(prompt))]))
    with torch.inference_mode():
        expected = reference(torch.tensor([prompt], device=CUDA)).logits[0, -1].float()
    assert (logits[0] - expected).abs().max().item() < BF16_LOGIT_TOL


def test_graph_replay_equals_eager_for_every_bucket() -> None:
    graphs, _ = native_and_reference(torch.bfloat16, cuda_graphs=True)
    eager, _ = native_and_reference(torch.bfloat16, cuda_graphs=False)
    prompts = [torch.randint(0, 257, (n,)).tolist() for n in (3, 9, 17, 33, 2)]  # 5 rows: bucket 8
    assert greedy(graphs, prompts, 16) == greedy(eager, prompts, 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_layer_kernels_match_their_references(dtype: torch.dtype) -> None:
    from model_runtime.kernels import fused_layer as fused

    g = torch.Generator(device=CUDA).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=CUDA).to(dtype)

    ulp = 4e-7 if dtype == torch.float32 else 2**-7

    def units(a: torch.Tensor, b: torch.Tensor) -> float:  # the largest difference in last places
        return ((a.float() - b.float()).abs() / (ulp * b.float().abs().clamp(min=1))).max().item()

    for n in (576, 4096, 300):
        x, add, weight = rand(7, n), rand(7, n), rand(n)
        x_ref = x.clone()
        out = fused.rms_norm(x, weight, 1e-5, add)
        assert units(out, fused.rms_norm_reference(x_ref, weight, 1e-5, add)) <= 1
        assert units(x, x_ref) == 0  # the residual stream holds the same sum
    for heads, kv_heads, dim in ((9, 3, 64), (32, 32, 128), (32, 8, 128)):
        qkv = rand(5, (heads + 2 * kv_heads) * dim)
        angles = torch.rand(5, 1, dim, generator=g, device=CUDA) * 100
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        caches = [torch.zeros(64, kv_heads, dim, dtype=dtype, device=CUDA) for _ in range(4)]
        slots = torch.tensor([3, 17, 30, 63, 0], device=CUDA)
        qkv_ref = qkv.clone()
        fused.rope_and_cache(qkv, cos, sin, caches[0], caches[1], slots, heads, kv_heads)
        fused.rope_and_cache_reference(qkv_ref, cos, sin, caches[2], caches[3], slots, heads, kv_heads)
        assert units(qkv, qkv_ref) <= 1
        assert units(caches[0], caches[2]) <= 1 and units(caches[1], caches[3]) == 0
    gate_up = rand(5, 2 * 11008)
    assert units(fused.silu_mul(gate_up), fused.silu_mul_reference(gate_up)) <= 1


def test_the_fused_layer_is_on_and_agrees_with_the_plain_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from model_runtime.kernels import fused_layer
    from model_runtime.kernels.fused_layer import fused_kernels_enabled

    prompt = torch.randint(0, 257, (37,)).tolist()

    def prefill_and_decode(runner: ModelRunner) -> torch.Tensor:
        blocks = BlockManager(runner.num_blocks, runner.block_size)
        seq = Sequence("r", list(prompt), len(prompt), SamplingParams(), max_total_tokens=512)
        blocks.allocate(seq, len(prompt))
        first, _ = runner.run(Batch(prefills=[ScheduledChunk(seq, 0, len(prompt))]))
        seq.token_ids.append(int(first[0].argmax()))
        blocks.allocate(seq, seq.num_tokens)
        second, _ = runner.run(Batch(decodes=[ScheduledChunk(seq, seq.num_tokens - 1, 1)]))  # a graph
        return torch.cat([first, second])

    fused, _ = native_and_reference(torch.bfloat16, cuda_graphs=True)
    assert fused_kernels_enabled(torch.zeros(1, device=CUDA))
    fused_logits = prefill_and_decode(fused)
    monkeypatch.setenv("ATENEA_FUSED_KERNELS", "0")
    monkeypatch.setattr(fused_layer, "_ENABLED", {})  # decided again, from the variable
    plain, _ = native_and_reference(torch.bfloat16, cuda_graphs=True)
    assert not fused_kernels_enabled(torch.zeros(1, device=CUDA))
    assert (prefill_and_decode(plain) - fused_logits).abs().max().item() < BF16_LOGIT_TOL


def test_loaded_engine_stays_finite_and_returns_every_block() -> None:
    from model_runtime import resolve_model
    from model_runtime.config import EngineConfig
    from model_runtime.engine import Engine

    path = resolve_model("random:smollm2-135m").path
    engine = Engine(EngineConfig(model_path=path, served_model_name="random", max_num_seqs=64))
    run = engine.runner.run

    def checked(
        batch: Batch, carried: CarriedTokens | None = None
    ) -> tuple[torch.Tensor, list[ScheduledChunk]]:
        logits, chunks = run(batch, carried)
        assert torch.isfinite(logits).all()
        return logits, chunks

    engine.runner.run = checked  # type: ignore[method-assign]
    for i in range(96):
        params = SamplingParams(temperature=0.8, max_tokens=32 + i % 64, ignore_eos=True)
        engine.add_request(f"r{i}", list(range(10, 10 + 20 + i * 3)), params)
    finished = 0
    while engine.has_work():
        for out in engine.step():
            assert out.error is None
            finished += out.finish_reason is not None
    assert finished == 96
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_every_sampling_option_runs_on_the_device_in_one_batch() -> None:
    """Penalties, logit bias, top-k/p, min-p, seeds, logprobs and a JSON grammar, side by side:
    every host-side input (the grammar's mask included) must reach the device's logits."""
    import json

    from model_runtime import resolve_model
    from model_runtime.api import Constraint, ConstraintKind
    from model_runtime.config import EngineConfig
    from model_runtime.engine import Engine

    path = resolve_model("random:smollm2-135m").path
    engine = Engine(EngineConfig(model_path=path, served_model_name="random", max_num_seqs=16))
    options = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7, top_p=0.9, seed=1),
        SamplingParams(temperature=1.0, top_k=5, min_p=0.05),
        SamplingParams(temperature=0.0, presence_penalty=1.0, frequency_penalty=0.5, repetition_penalty=1.2),
        SamplingParams(temperature=0.0, logit_bias=((42, 100.0),)),
        SamplingParams(temperature=0.8, logprobs=3),
        SamplingParams(temperature=0.0, constraint=Constraint(ConstraintKind.JSON_OBJECT)),
    ]
    for i, params in enumerate(options):
        engine.add_request(f"r{i}", list(range(10, 40)), replace(params, max_tokens=24, ignore_eos=True))
    outputs: dict[str, list] = {}
    while engine.has_work():
        for out in engine.step():
            assert out.error is None
            outputs.setdefault(out.request_id, []).append(out)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert all(t == 42 for o in outputs["r4"] for t in o.token_ids)  # a +100 bias always wins
    entries = [e for o in outputs["r5"] for e in o.logprobs or []]
    assert len(entries) == 24 and all(len(e.top) == 3 for e in entries)
    text = "".join(o.text for o in outputs["r6"])
    if outputs["r6"][-1].finish_reason.value == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.lstrip().startswith("{")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(32, 32, 128), (32, 8, 128), (9, 3, 64)])
def test_prefill_kernel_matches_reference(dtype: torch.dtype, heads: int, kv_heads: int, dim: int) -> None:
    chunks = [(0, 1), (0, 64), (0, 65), (17, 1), (64, 63), (100, 130), (0, 600), (500, 300)]
    q, keys, values, tables, starts, lens, before = (
        t.to(CUDA) for t in random_chunks(heads, kv_heads, dim, chunks, seed=3)
    )
    q, keys, values = q.to(dtype), keys.to(dtype), values.to(dtype)
    out = torch.zeros_like(q)
    paged_prefill(out, q, keys, values, tables, starts, lens, before, 16, dim**-0.5, int(lens.max()))
    expected = torch.zeros_like(q, dtype=torch.float32)
    paged_prefill_reference(
        expected, q.float(), keys.float(), values.float(), tables, starts, lens, before, 16, dim**-0.5
    )
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=0)


def test_the_image_pipelines_peak_is_kept_out_of_the_kv_cache(tmp_path: Path) -> None:
    from model_runtime import resolve_model
    from model_runtime.config import EngineConfig
    from model_runtime.engine import Engine
    from model_runtime.images import load_image_model, peak_device_bytes, resolve_image_model
    from tests.model_runtime.images.tiny_pipeline import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / "tiny-sd")
    images = load_image_model(resolve_image_model(str(folder)), device="cuda")
    measured = peak_device_bytes(images, 16)
    assert measured > 0
    path = resolve_model("random:smollm2-135m").path

    def kv_blocks(reserved: int) -> tuple[int, int]:
        config = EngineConfig(
            model_path=path,
            served_model_name="random",
            enforce_eager=True,
            reserved_gpu_memory_bytes=reserved,
        )
        engine = Engine(config)
        blocks = engine.runner.num_blocks
        per_block = ModelRunner.kv_bytes_per_block(engine.model, config.block_size, engine.dtype)
        del engine
        gc.collect()
        torch.cuda.empty_cache()
        return blocks, per_block

    # The tiny pipeline's peak is a few MiB; 2 GiB more makes the difference stand out of the noise.
    reserved = measured + 2 * 2**30
    without, per_block = kv_blocks(0)
    with_images, _ = kv_blocks(reserved)
    expected = reserved / per_block
    assert abs((without - with_images) - expected) <= 0.02 * expected + 64


def test_the_engine_process_on_cuda_answers_as_the_engine_thread() -> None:
    """`--engine-process` is the default with CUDA: the child must initialise CUDA itself (the
    server never does) and give the same greedy tokens as the engine on a thread."""
    # Its own event loop: the GPU machine's pytest has no asyncio plugin.
    asyncio.run(_engine_process_and_thread_agree())


async def _engine_process_and_thread_agree() -> None:
    from model_runtime import resolve_model
    from model_runtime.async_engine import AsyncEngine
    from model_runtime.config import EngineConfig
    from model_runtime.engine_process import EngineProcess, engine_for

    path = resolve_model("random:smollm2-135m").path
    # A fixed KV budget: the thread engine's cache stays in this process's allocator.
    config = EngineConfig(model_path=path, served_model_name="random", kv_cache_memory_gib=1.0)
    assert isinstance(engine_for(config), EngineProcess)
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    prompts = [list(range(10, 10 + n)) for n in (5, 40, 300)]
    answers = []
    for engine in (AsyncEngine(config), EngineProcess(config)):
        await engine.start()
        try:
            answers.append(
                [
                    [t async for out in engine.generate(f"r{i}", prompt, params) for t in out.token_ids]
                    for i, prompt in enumerate(prompts)
                ]
            )
        finally:
            await engine.shutdown()
    assert answers[0] == answers[1]
    assert all(len(tokens) == 32 for tokens in answers[1])


def test_prefill_steps_of_any_shape_reuse_one_compiled_kernel() -> None:
    """The H100 run showed a batch-1 prefill compiling the prefill kernel anew (0.5-0.7 s of W1's
    time to first token). Steps of 1 to 5 chunks with tables of 1 to 30 blocks must all run the
    variant the first step compiled."""
    from model_runtime.kernels import paged_prefill as prefill_module

    runner, _ = native_and_reference(torch.bfloat16, cuda_graphs=False)
    kernel = prefill_module._kernel()
    device = torch.cuda.current_device()

    def compiled() -> int:
        return len(kernel.device_caches[device][0])  # Triton 3.x: (kernel cache, ...) per device

    def prefill(lengths: list[int]) -> None:
        blocks = BlockManager(runner.num_blocks, runner.block_size)
        seqs = [
            Sequence(f"r{i}", [3 + i] * n, n, SamplingParams(), max_total_tokens=512)
            for i, n in enumerate(lengths)
        ]
        for seq in seqs:
            blocks.allocate(seq, seq.num_prompt_tokens)
        runner.run(Batch(prefills=[ScheduledChunk(s, 0, s.num_prompt_tokens) for s in seqs]))
        torch.cuda.synchronize()

    prefill([17])
    first = compiled()
    assert first >= 1
    for lengths in ([5], [16], [130, 7], [33, 64, 2], [1, 1, 1, 1], [100, 50, 25, 12, 6], [30 * 16 - 3]):
        prefill(lengths)
    assert compiled() == first
