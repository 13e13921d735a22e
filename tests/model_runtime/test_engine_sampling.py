"""The engine's sampling surface on a tiny random model: n samples sharing a prompt, logprobs that
line up with the text, logit bias and penalties, grammar-constrained output."""

from __future__ import annotations

import json
from pathlib import Path

import llguidance
import pytest

from model_runtime.api import (
    Constraint,
    ConstraintKind,
    FinishReason,
    InvalidParameter,
    RequestOutput,
    SamplingParams,
)
from model_runtime.grammar import grammar_of
from tests.model_runtime.test_engine import make_engine, prompts, run_all, tokens_of


def by_index(outs: list[RequestOutput]) -> dict[int, list[RequestOutput]]:
    choices: dict[int, list[RequestOutput]] = {}
    for out in outs:
        choices.setdefault(out.index, []).append(out)
    return choices


def test_n_samples_share_the_prompt_blocks(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path, dtype="float32")
    prompt = prompts(1, seed=5)[0] * 3  # > 3 blocks of 16
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    engine.add_request("solo", prompt, greedy)
    solo = tokens_of(run_all(engine)["solo"])
    hits_before = engine.stats().prefix_cache_hit_tokens

    engine = make_engine(tiny_model_path, dtype="float32")
    engine.add_request("n", prompt, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, n=4))
    choices = by_index(run_all(engine)["n"])
    assert sorted(choices) == [0, 1, 2, 3]
    for outs in choices.values():
        assert tokens_of(outs) == solo
        assert [o.finished for o in outs].count(True) == 1 and outs[-1].finish_reason is FinishReason.LENGTH
    # The 3 later samples found every full block of the prompt already computed.
    shared = (len(prompt) - 1) // 16 * 16
    assert engine.stats().prefix_cache_hit_tokens == 3 * shared
    assert hits_before == 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_seeded_samples_differ_from_each_other_and_repeat(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path)
    params = SamplingParams(temperature=30.0, seed=3, max_tokens=10, ignore_eos=True, n=3)
    runs = []
    for rid in ("a", "b"):
        engine.add_request(rid, prompts(1)[0], params)
        runs.append({i: tokens_of(o) for i, o in by_index(run_all(engine)[rid]).items()})
    assert runs[0] == runs[1]
    assert len({tuple(t) for t in runs[0].values()}) == 3


def test_abort_ends_every_sample(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path)
    engine.add_request("a", prompts(1)[0], SamplingParams(max_tokens=50, ignore_eos=True, n=3))
    engine.step()
    assert sorted(o.index for o in engine.abort("a")) == [0, 1, 2]
    assert not engine.has_work() and engine.blocks.num_free_blocks == engine.blocks.num_blocks


@pytest.mark.parametrize("stop", [(), ("e",)])
def test_logprob_tokens_concatenate_to_the_text(tiny_model_path: Path, stop: tuple[str, ...]) -> None:
    engine = make_engine(tiny_model_path)
    params = SamplingParams(temperature=1.0, seed=1, max_tokens=40, ignore_eos=True, logprobs=3, stop=stop)
    engine.add_request("a", prompts(1)[0], params)
    outs = run_all(engine)["a"]
    text = "".join(o.text for o in outs)
    entries = [e for o in outs for e in (o.logprobs or [])]
    assert "".join(e.token for e in entries) == text
    assert b"".join(e.bytes for e in entries) == text.encode()
    # A stream never sends an entry ahead of its text.
    sent_text = sent_tokens = ""
    for out in outs:
        sent_text += out.text
        sent_tokens += "".join(e.token for e in out.logprobs or [])
        assert sent_text.startswith(sent_tokens)
    for e in entries:
        assert e.logprob is not None and e.logprob <= 0 and len(e.top) == 3
        assert e.top[0].logprob >= e.top[1].logprob >= e.top[2].logprob
        assert e.logprob <= e.top[0].logprob + 1e-6


def test_logit_bias_forces_a_token_and_is_validated(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path)
    params = SamplingParams(max_tokens=5, ignore_eos=True, logit_bias=((42, 100),))
    engine.add_request("a", prompts(1)[0], params)
    assert tokens_of(run_all(engine)["a"]) == [42] * 5
    with pytest.raises(InvalidParameter) as info:
        engine.validate([5, 6], SamplingParams(logit_bias=((49152, 1.0),)))
    assert info.value.param == "logit_bias"


def test_frequency_penalty_stops_repetition(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path)
    p = prompts(1, seed=2)[0]
    engine.add_request("plain", p, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))
    engine.add_request(
        "penalised", p, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, frequency_penalty=2.0)
    )
    engine.add_request(
        "banned", p, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, presence_penalty=-2.0)
    )
    outs = run_all(engine)
    plain, penalised = tokens_of(outs["plain"]), tokens_of(outs["penalised"])
    assert len(set(penalised)) > len(set(plain))


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "constraint",
    [Constraint(ConstraintKind.JSON_OBJECT), Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA))],
)
def test_constrained_output_follows_the_grammar(tiny_model_path: Path, constraint: Constraint) -> None:
    engine = make_engine(tiny_model_path)
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=60, constraint=constraint, n=2)
    engine.add_request("a", prompts(1)[0], params)
    tokenizer = engine.grammar._ll_tokenizer()
    for outs in by_index(run_all(engine)["a"]).values():
        ids = tokens_of(outs)
        # Every token the model produced was allowed by a fresh matcher of the same grammar.
        matcher = llguidance.LLMatcher(tokenizer, grammar_of(constraint))
        assert matcher.try_consume_tokens(ids) == len(ids)
        if outs[-1].finish_reason is FinishReason.STOP:
            value = json.loads("".join(o.text for o in outs))
            assert isinstance(value, dict)
            if constraint.kind is ConstraintKind.JSON_SCHEMA:
                assert set(value) == {"name", "age"}


def test_invalid_schema_is_refused(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path)
    schema = {"type": "object", "properties": {"a": {"type": 5}}}
    bad = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(schema))
    with pytest.raises(InvalidParameter):
        engine.validate([5, 6], SamplingParams(constraint=bad))


def test_a_complete_grammar_ends_the_output_even_with_ignore_eos(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path)
    schema = {
        "type": "object",
        "properties": {"a": {"type": "boolean"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    constraint = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(schema))
    engine.add_request(
        "a", prompts(1)[0], SamplingParams(max_tokens=60, ignore_eos=True, constraint=constraint)
    )
    outs = run_all(engine)["a"]
    assert outs[-1].finish_reason is FinishReason.STOP
    assert json.loads("".join(o.text for o in outs)) in ({"a": True}, {"a": False})


def test_prompt_logprobs_match_transformers(tiny_model_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    engine = make_engine(tiny_model_path, dtype="float32")
    prompt = prompts(1, seed=9)[0]
    engine.add_request("a", prompt, SamplingParams(max_tokens=2, ignore_eos=True, prompt_logprobs=2))
    outs = run_all(engine)["a"]
    entries = outs[0].prompt_logprobs
    assert entries is not None and all(o.prompt_logprobs is None for o in outs[1:])
    assert [e.token_id for e in entries] == prompt and entries[0].logprob is None
    assert "".join(e.token for e in entries) == engine.tokenizer.decode(prompt)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(reference(torch.tensor([prompt])).logits[0], dim=-1)
    for i, entry in enumerate(entries[1:]):
        assert entry.logprob == pytest.approx(float(logp[i, prompt[i + 1]]), abs=1e-3)
        assert [t.token_id for t in entry.top] == logp[i].topk(2).indices.tolist()
