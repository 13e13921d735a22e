import math
from collections.abc import Sequence

import torch

from model_runtime import sampler
from model_runtime.api import SamplingParams
from model_runtime.sampler import (
    SamplingBatch,
    _top_k_top_p,
    probabilities,
    process_logits,
    sample,
    unpack_bitmask,
)


def draw(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
) -> list[int]:
    return sample(logits, SamplingBatch(params, generators)).tokens


def test_greedy_is_argmax() -> None:
    logits = torch.randn(4, 50)
    params = [SamplingParams(temperature=0.0)] * 4
    assert draw(logits, params, [None] * 4) == logits.argmax(-1).tolist()


def test_mixed_greedy_and_sampled_rows() -> None:
    logits = torch.randn(3, 50)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.0),
    ]
    out = draw(logits, params, [None] * 3)
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = torch.randn(2, 50)
    params = [SamplingParams(temperature=1.5, top_k=1), SamplingParams(temperature=1.5, top_p=1e-6)]
    for _ in range(20):
        assert draw(logits, params, [None, None]) == logits.argmax(-1).tolist()


def test_filters_keep_the_documented_sets() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = probabilities(logits, [SamplingParams(top_p=0.8)]) > 0
    assert kept.tolist() == [[True, True, False, False]]
    kept = probabilities(logits, [SamplingParams(top_k=3)]) > 0
    assert kept.tolist() == [[True, True, True, False]]
    kept = probabilities(logits, [SamplingParams(min_p=0.5)]) > 0  # >= 0.25
    assert kept.tolist() == [[True, True, False, False]]


def test_a_top_k_as_large_as_the_vocabulary_filters_nothing() -> None:
    """A client's top_k of the vocabulary's size (or more) is no filter; it once failed the whole
    step, and with it every request in the batch."""
    logits = torch.randn(3, 50)
    params = [SamplingParams(top_k=50), SamplingParams(top_k=10_000), SamplingParams(top_k=50, top_p=0.9)]
    assert torch.equal(probabilities(logits[:2], params[:2]), torch.softmax(logits[:2], dim=-1))
    probs = probabilities(logits, params)
    assert torch.equal(probs[:2], torch.softmax(logits[:2], dim=-1))
    assert 0 < int((probs[2] > 0).sum()) < 50  # the top_p row is still filtered
    assert len(draw(logits, params, [None] * 3)) == 3


def test_samples_follow_the_distribution() -> None:
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(20_000, 3).contiguous()
    out = torch.tensor(draw(logits, [SamplingParams()] * 20_000, [None] * 20_000))
    freq = torch.bincount(out, minlength=3).float() / 20_000
    torch.testing.assert_close(freq, probs, atol=0.02, rtol=0)


def test_temperature_sharpens() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    cold = probabilities(logits, [SamplingParams(temperature=0.25)])[0]
    hot = probabilities(logits, [SamplingParams(temperature=2.0)])[0]
    assert cold[0] > 0.98 and hot[0] < 0.6


def test_seeded_rows_do_not_depend_on_companions() -> None:
    logits = torch.randn(1, 1000)
    params = SamplingParams(seed=7)

    def draws(batch: int) -> list[int]:
        g = torch.Generator().manual_seed(7)
        rows = logits.expand(batch, 1000).contiguous()
        return [draw(rows, [params] * batch, [g] + [None] * (batch - 1))[0] for _ in range(10)]

    assert draws(1) == draws(1) == draws(5)


def test_frequency_and_presence_penalties_follow_openai() -> None:
    logits = torch.zeros(1, 5)
    params = SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=1.0)
    prompt = [4, 4, 4]  # prompt tokens are not penalised by OpenAI's definition
    batch = SamplingBatch([params], [None], token_ids=[prompt + [1, 1, 2]], num_prompt_tokens=[3])
    out = process_logits(logits, batch)[0]
    assert out.tolist() == [0.0, -(2 * 0.5 + 1.0), -(0.5 + 1.0), 0.0, 0.0]


def test_repetition_penalty_covers_prompt_and_output() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, 1.0]])
    params = SamplingParams(repetition_penalty=2.0)
    batch = SamplingBatch([params], [None], token_ids=[[0, 1]], num_prompt_tokens=[1])
    assert process_logits(logits, batch)[0].tolist() == [1.0, -4.0, 2.0, 1.0]


def test_logit_bias_can_force_and_ban_tokens() -> None:
    logits = torch.randn(2, 50)
    force = SamplingParams(temperature=1.0, logit_bias=((7, 100.0),))
    ban = SamplingParams(temperature=0.0, logit_bias=((int(logits[1].argmax()), -100.0),))
    for _ in range(10):
        tokens = draw(logits, [force, ban], [None, None])
        assert tokens[0] == 7 and tokens[1] != int(logits[1].argmax())


def test_bitmask_restricts_the_draw() -> None:
    logits = torch.randn(2, 70)
    allowed = torch.full((2, 3), -1, dtype=torch.int32)
    allowed[0] = 0
    allowed[0, 1] = 1 << 3  # only token 35
    assert unpack_bitmask(allowed, 70)[0].nonzero().flatten().tolist() == [35]
    params = [SamplingParams(), SamplingParams(temperature=0.0)]
    for _ in range(10):
        result = sample(logits, SamplingBatch(params, [None, None], allowed=allowed))
        assert result.tokens == [35, int(logits[1].argmax())]


def test_logprobs_are_those_of_the_sampled_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    params = SamplingParams(temperature=0.5, top_k=2, logprobs=3)
    result = sample(logits, SamplingBatch([params], [None]))
    row = result.logprobs[0]
    assert row is not None
    p0 = 1 / (1 + math.exp(-2.0))  # top-2 at temperature 0.5: logits 4 and 2
    expected = {0: math.log(p0), 1: math.log(1 - p0)}
    assert math.isclose(row.logprob, expected[result.tokens[0]], rel_tol=1e-5)
    assert [t for t, _ in row.top][:2] == [0, 1] and len(row.top) == 3
    assert math.isclose(row.top[0][1], expected[0], rel_tol=1e-5)
    assert row.top[2][1] == -9999.0  # filtered out: reported as a finite floor, not -inf


def test_greedy_logprobs_use_temperature_one() -> None:
    logits = torch.tensor([[1.0, 0.0]])
    result = sample(logits, SamplingBatch([SamplingParams(temperature=0.0, logprobs=0)], [None]))
    assert result.tokens == [0]
    row = result.logprobs[0]
    assert row is not None and row.top == []
    assert math.isclose(row.logprob, -math.log1p(math.exp(-1.0)), rel_tol=1e-5)


def _kept_reference(row: torch.Tensor, top_k: int | None, top_p: float) -> set[int]:
    """Row by row with a full sort: the top_k best, then the smallest prefix reaching top_p."""
    values, order = row.sort(descending=True)
    values, order = values[: top_k or len(row)], order[: top_k or len(row)]
    probs = torch.softmax(values.double(), dim=0)
    kept = []
    mass = 0.0
    for p, token in zip(probs.tolist(), order.tolist(), strict=True):
        if kept and mass >= top_p:
            break
        kept.append(token)
        mass += p
    return set(kept)


def test_top_k_top_p_keep_the_same_sets_whichever_candidate_size_decides(monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    vocab = 49152
    cases = [  # (logit scale, params, the candidate size that decides: 0 for the full sort)
        (8.0, SamplingParams(top_p=0.9), 64),  # peaked rows close inside 64 candidates
        (8.0, SamplingParams(top_k=40), 64),
        (8.0, SamplingParams(top_p=1e-6), 64),
        (8.0, SamplingParams(top_k=5, top_p=0.5), 64),
        (3.0, SamplingParams(top_k=100, top_p=0.8), 1024),  # a top_k past the first size
        (0.5, SamplingParams(top_p=0.99), 0),  # flat
        (8.0, SamplingParams(top_k=2000), 0),  # past every size
    ]
    sizes: list[int] = []
    filter_candidates = sampler._filter_candidates

    def record(logits, k, top_p, size):
        out = filter_candidates(logits, k, top_p, size)
        sizes.append(size if out is not None else -size)
        return out

    monkeypatch.setattr(sampler, "_filter_candidates", record)
    rows = torch.stack([torch.randn(vocab, generator=g) * scale for scale, _, _ in cases])
    for row, (_, params, decides) in zip(rows, cases, strict=True):
        sizes.clear()
        out = _top_k_top_p(row[None], [params])[0]
        assert (sizes[-1] if sizes and sizes[-1] > 0 else 0) == decides, (params, sizes)
        finite = torch.isfinite(out)
        assert set(finite.nonzero().flatten().tolist()) == _kept_reference(row, params.top_k, params.top_p)
        assert torch.equal(out[finite], row[finite])  # kept logits are unchanged
    # One batch of them all, and a row that filters nothing, left as it is.
    batch = torch.cat([rows, torch.randn(1, vocab, generator=g)])
    params = [p for _, p, _ in cases] + [SamplingParams()]
    out = _top_k_top_p(batch, params)
    for i, p in enumerate(params[:-1]):
        kept = set(torch.isfinite(out[i]).nonzero().flatten().tolist())
        assert kept == _kept_reference(batch[i], p.top_k, p.top_p)
    assert torch.equal(out[-1], batch[-1])
