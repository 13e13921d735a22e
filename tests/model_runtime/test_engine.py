"""The engine end to end on a tiny random model: batching, chunking, preemption, finishing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from model_runtime.api import (
    ContextLengthExceeded,
    FinishReason,
    InvalidPrompt,
    RequestOutput,
    SamplingParams,
)
from model_runtime.config import EngineConfig
from model_runtime.engine import Engine

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def make_engine(path: Path, **kw: object) -> Engine:
    return Engine(EngineConfig(model_path=path, served_model_name="tiny", device="cpu", **kw))


def run_all(engine: Engine) -> dict[str, list[RequestOutput]]:
    outputs: dict[str, list[RequestOutput]] = {}
    for _ in range(10_000):
        if not engine.has_work():
            break
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    assert not engine.has_work()
    return outputs


def tokens_of(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, 49152, (int(torch.randint(3, 60, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def reference(tiny_model_path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()


def reference_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0, len(prompt) :].tolist()


@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_greedy_matches_transformers(tiny_model_path: Path, reference: torch.nn.Module, dtype: str) -> None:
    """fp32 is exact; `auto` on a CPU keeps fp16 weights, close enough not to change greedy picks."""
    engine = make_engine(tiny_model_path, dtype=dtype)
    ps = prompts(3)
    for i, p in enumerate(ps):
        engine.add_request(f"r{i}", p, GREEDY)
    outs = run_all(engine)
    for i, p in enumerate(ps):
        assert tokens_of(outs[f"r{i}"]) == reference_greedy(reference, p, 12)
        assert outs[f"r{i}"][-1].finish_reason is FinishReason.LENGTH


def test_batching_chunking_and_preemption_do_not_change_greedy_output(tiny_model_path: Path) -> None:
    ps = prompts(12, seed=1)
    solo = make_engine(tiny_model_path)
    expected = {}
    for i, p in enumerate(ps):
        solo.add_request(f"r{i}", p, GREEDY)
        expected[f"r{i}"] = tokens_of(run_all(solo)[f"r{i}"])

    # Tiny token budget (chunked prefill) and a KV budget far below what 12 sequences need.
    engine = make_engine(
        tiny_model_path,
        max_num_batched_tokens=24,
        block_size=4,
        # 40 blocks: 4 tokens x K and V x 2 layers x 2 KV heads x 16 dims x 2 bytes (an fp16 cache)
        kv_cache_memory_gib=40 * 4 * 2 * 2 * 2 * 16 * 2 / 2**30,
    )
    assert engine.blocks.num_blocks == 40
    outs: dict[str, list[RequestOutput]] = {}
    for i, p in enumerate(ps):  # requests join a running batch at step boundaries
        engine.add_request(f"r{i}", p, GREEDY)
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
    for rid, more in run_all(engine).items():
        outs.setdefault(rid, []).extend(more)
    assert engine.scheduler.num_preemptions > 0
    assert {rid: tokens_of(o) for rid, o in outs.items()} == expected
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_abort_returns_blocks(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path)
    engine.add_request("a", prompts(1)[0], SamplingParams(max_tokens=100, ignore_eos=True))
    engine.step()
    assert engine.blocks.num_free_blocks < engine.blocks.num_blocks
    assert [o.finish_reason for o in engine.abort("a")] == [FinishReason.ABORT]
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks and not engine.has_work()


def test_warm_up_leaves_an_idle_engine_that_answers_as_a_cold_one(tiny_model_path: Path) -> None:
    """The warm-up a GPU engine runs before serving (on the CPU here, where it is not automatic)
    returns every block, zeroes the counters and changes no later answer, with overlapped steps
    as a GPU engine has them."""
    prompt = prompts(1, seed=3)[0]
    cold = make_engine(tiny_model_path, overlap_steps=True)
    cold.add_request("a", prompt, GREEDY)
    expected = tokens_of(run_all(cold)["a"])
    warm = make_engine(tiny_model_path, overlap_steps=True)
    warm.warm_up()
    assert not warm.has_work() and not warm.requests
    assert warm.blocks.num_free_blocks == warm.blocks.num_blocks
    stats = warm.stats()
    assert (stats.steps, stats.tokens_generated, stats.prefix_cache_queried_tokens) == (0, 0, 0)
    warm.add_request("a", prompt, GREEDY)
    assert tokens_of(run_all(warm)["a"]) == expected
    assert warm.stats().tokens_generated == len(expected)
    short = make_engine(tiny_model_path, max_model_len=8)  # the warm-up's prompts must fit any window
    short.warm_up()
    assert not short.has_work() and short.blocks.num_free_blocks == short.blocks.num_blocks


def test_seed_reproducible(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path)
    params = SamplingParams(temperature=30.0, seed=1234, max_tokens=16, ignore_eos=True)
    runs = []
    for i in range(2):
        engine.add_request(f"s{i}", prompts(1)[0], params)
        runs.append(tokens_of(run_all(engine)[f"s{i}"]))
    assert runs[0] == runs[1]
    engine.add_request(
        "other", prompts(1)[0], SamplingParams(temperature=30.0, seed=99, max_tokens=16, ignore_eos=True)
    )
    assert tokens_of(run_all(engine)["other"]) != runs[0]


def test_stop_token_ids_and_eos(tiny_model_path: Path, reference: torch.nn.Module) -> None:
    engine = make_engine(tiny_model_path, dtype="float32")
    p = prompts(1)[0]
    greedy = reference_greedy(reference, p, 10)
    # The last token that first appears late in the greedy output, so the stop happens there.
    k = max(i for i, t in enumerate(greedy) if t not in greedy[:i])
    engine.add_request("a", p, SamplingParams(temperature=0.0, max_tokens=20, stop_token_ids=(greedy[k],)))
    outs = run_all(engine)["a"]
    assert tokens_of(outs) == greedy[: k + 1]
    assert outs[-1].finish_reason is FinishReason.STOP and outs[-1].completion_tokens == k + 1


def test_validation(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path, max_model_len=64)
    with pytest.raises(ContextLengthExceeded):
        engine.validate([5] * 60, SamplingParams(max_tokens=10))
    with pytest.raises(ContextLengthExceeded):
        engine.validate([5] * 64, SamplingParams(max_tokens=None))
    with pytest.raises(InvalidPrompt):
        engine.validate([], SamplingParams())
    with pytest.raises(InvalidPrompt):
        engine.validate([49152], SamplingParams())


def test_max_tokens_none_stops_at_the_context_window(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path, max_model_len=40)
    engine.add_request("a", [5] * 30, SamplingParams(max_tokens=None, ignore_eos=True))
    outs = run_all(engine)["a"]
    assert outs[-1].finish_reason is FinishReason.LENGTH and outs[-1].completion_tokens == 10


def test_prefix_cache_reuses_a_shared_prompt_without_changing_outputs(tiny_model_path: Path) -> None:
    system = prompts(1, seed=3)[0] * 3  # a long shared prefix
    questions = [system + q for q in prompts(3, seed=4)]
    outputs = {}
    for caching in (False, True):
        engine = make_engine(tiny_model_path, enable_prefix_caching=caching, dtype="float32")
        for i, p in enumerate(questions):  # one after another: each finds the previous ones' blocks
            engine.add_request(f"q{i}", p, GREEDY)
            outputs[(caching, i)] = tokens_of(run_all(engine)[f"q{i}"])
        stats = engine.stats()
        if caching:
            assert stats.prefix_cache_hit_tokens >= 2 * (len(system) // 16) * 16
        else:
            assert stats.prefix_cache_hit_tokens == 0
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert all(outputs[(True, i)] == outputs[(False, i)] for i in range(3))
