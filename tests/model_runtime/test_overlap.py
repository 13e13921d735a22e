"""Overlapped steps (`overlap_steps`, see in_flight.py): each step is launched before the host reads
the previous one's tokens. On a CPU nothing runs ahead, but every decision is the same as on a
GPU, so forcing it on here checks that outputs, finish rules and KV blocks do not change."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from model_runtime.api import Constraint, ConstraintKind, FinishReason, RequestOutput, SamplingParams
from model_runtime.engine import Engine
from tests.model_runtime.test_engine import make_engine, prompts, run_all, tokens_of

GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)


def summary(outs: dict[str, list[RequestOutput]]) -> dict[tuple[str, int], tuple]:
    """Per request and sample: tokens, text, finish reason and the usage count."""
    result = {}
    for rid, items in outs.items():
        for index in {o.index for o in items}:
            mine = [o for o in items if o.index == index]
            result[rid, index] = (
                tokens_of(mine),
                "".join(o.text for o in mine),
                mine[-1].finish_reason,
                mine[-1].completion_tokens,
            )
    return result


def carried_steps(engine: Engine) -> list[bool]:
    """Records, for every step the runner runs, whether some input token came from the device."""
    seen: list[bool] = []
    run = engine.runner.run

    def spy(batch, carried=None):  # type: ignore[no-untyped-def]
        seen.append(carried is not None)
        return run(batch, carried)

    engine.runner.run = spy  # type: ignore[method-assign]
    return seen


def workload(tiny_model_path: Path) -> dict[str, tuple[list[int], SamplingParams]]:
    """Greedy and seeded requests that end every way a request ends: length, a stop token, a stop
    string, at different steps; two samples of one request; more requests than fit at once."""
    ps = prompts(10, seed=3)
    probe = make_engine(tiny_model_path)
    probe.add_request("probe", ps[0], GREEDY)
    out = run_all(probe)["probe"]
    stop_token, text = tokens_of(out)[6], "".join(o.text for o in out)
    requests = {f"g{i}": (p, replace(GREEDY, max_tokens=4 + 3 * i)) for i, p in enumerate(ps[:5])}
    requests["stop-token"] = (ps[0], replace(GREEDY, stop_token_ids=(stop_token,)))
    requests["stop-string"] = (ps[0], replace(GREEDY, stop=(text[12:15],)))
    requests["seeded"] = (ps[5], SamplingParams(temperature=0.9, top_p=0.8, seed=7, max_tokens=15))
    requests["n2"] = (ps[6], SamplingParams(temperature=1.2, seed=11, n=2, max_tokens=9, ignore_eos=True))
    requests["eos"] = (ps[7], SamplingParams(temperature=1.0, seed=5, max_tokens=30))
    return requests


def run_workload(engine: Engine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict:
    outs: dict[str, list[RequestOutput]] = {}
    for rid, (prompt, params) in requests.items():  # requests join a running batch at step boundaries
        engine.add_request(rid, prompt, params)
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
    for rid, more in run_all(engine).items():
        outs.setdefault(rid, []).extend(more)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    return summary(outs)


@pytest.mark.parametrize("tight", [False, True], ids=["roomy", "chunked-and-preempted"])
def test_overlapped_steps_give_the_same_outputs(tiny_model_path: Path, tight: bool) -> None:
    requests = workload(tiny_model_path)
    # A small token budget chunks prompts; 40 KV blocks of 4 tokens are far below what 11
    # sequences need, so sequences are preempted, some with a token still in flight.
    kv_gib = 40 * 4 * 2 * 2 * 2 * 16 * 2 / 2**30  # 4 tokens x K, V x 2 layers x 2 heads x 16 dims x fp16
    config = (
        {"max_num_batched_tokens": 24, "block_size": 4, "kv_cache_memory_gib": kv_gib}
        if tight
        else {"max_num_seqs": 4}
    )
    expected = run_workload(make_engine(tiny_model_path, overlap_steps=False, **config), requests)
    engine = make_engine(tiny_model_path, overlap_steps=True, **config)
    carried = carried_steps(engine)
    assert run_workload(engine, requests) == expected
    assert sum(carried) > len(carried) // 2  # most steps took their inputs from the previous draw
    if tight:
        assert engine.scheduler.num_preemptions > 0
    reasons = {v[2] for v in expected.values()}
    assert reasons == {FinishReason.LENGTH, FinishReason.STOP}


def test_a_token_is_delivered_one_step_after_its_draw(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path, overlap_steps=True)
    runs = carried_steps(engine)
    engine.add_request("a", prompts(1)[0], replace(GREEDY, max_tokens=3))
    assert engine.step() == []  # the prompt ran; its token is still in flight
    assert [len(o.token_ids) for o in engine.step()] == [1]  # read while the next step ran
    assert [o.finish_reason for o in engine.step()] == [None]
    # The third token ends the request: no fourth step is launched for it, only the read.
    assert [o.finish_reason for o in engine.step()] == [FinishReason.LENGTH]
    assert runs == [False, True, True]
    assert not engine.has_work() and engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_requests_that_need_their_last_token_on_the_host_step_without_overlap(tiny_model_path: Path) -> None:
    """Penalties count the last token, a grammar advances on it, logprobs are read where drawn:
    a step with such a row reads the previous step first and carries nothing on the device."""
    ps = prompts(4, seed=4)
    requests = {
        "plain": (ps[0], GREEDY),
        "penalized": (ps[1], replace(GREEDY, frequency_penalty=1.5)),
        "logprobs": (ps[2], replace(GREEDY, logprobs=2)),
        "json": (ps[3], replace(GREEDY, max_tokens=12, constraint=Constraint(ConstraintKind.JSON_OBJECT))),
    }
    expected = run_workload(make_engine(tiny_model_path, overlap_steps=False), requests)
    engine = make_engine(tiny_model_path, overlap_steps=True)
    carried = carried_steps(engine)
    assert run_workload(engine, requests) == expected
    assert not any(carried)  # until the last of the others finishes, "plain" never runs alone...
    engine.add_request("alone", ps[0], GREEDY)
    run_all(engine)
    assert carried[-1]  # ...and alone it overlaps


def test_abort_while_a_token_is_in_flight(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path, overlap_steps=True)
    engine.add_request("a", prompts(1)[0], replace(GREEDY, max_tokens=50))
    delivered = sum(len(o.token_ids) for _ in range(4) for o in engine.step())
    assert engine.in_flight is not None
    (out,) = engine.abort("a")
    assert out.finish_reason is FinishReason.ABORT
    assert out.completion_tokens == delivered  # the token in flight is dropped, not counted
    assert not engine.has_work() and engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_abort_of_one_request_while_others_run(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path, overlap_steps=True)
    ps = prompts(2, seed=5)
    engine.add_request("a", ps[0], replace(GREEDY, max_tokens=50))
    engine.add_request("b", ps[1], replace(GREEDY, max_tokens=8))
    for _ in range(3):
        engine.step()
    engine.abort("a")  # its token in flight is read with b's and dropped
    outs = run_all(engine)
    assert set(outs) == {"b"} and outs["b"][-1].finish_reason is FinishReason.LENGTH
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
