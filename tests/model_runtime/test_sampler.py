import torch

from model_runtime.api import SamplingParams
from model_runtime.sampler import probabilities, sample


def test_greedy_is_argmax() -> None:
    logits = torch.randn(4, 50)
    params = [SamplingParams(temperature=0.0)] * 4
    assert sample(logits, params, [None] * 4) == logits.argmax(-1).tolist()


def test_mixed_greedy_and_sampled_rows() -> None:
    logits = torch.randn(3, 50)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.0),
    ]
    out = sample(logits, params, [None] * 3)
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = torch.randn(2, 50)
    params = [SamplingParams(temperature=1.5, top_k=1), SamplingParams(temperature=1.5, top_p=1e-6)]
    for _ in range(20):
        assert sample(logits, params, [None, None]) == logits.argmax(-1).tolist()


def test_filters_keep_the_documented_sets() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = probabilities(logits, [SamplingParams(top_p=0.8)]) > 0
    assert kept.tolist() == [[True, True, False, False]]
    kept = probabilities(logits, [SamplingParams(top_k=3)]) > 0
    assert kept.tolist() == [[True, True, True, False]]
    kept = probabilities(logits, [SamplingParams(min_p=0.5)]) > 0  # >= 0.25
    assert kept.tolist() == [[True, True, False, False]]


def test_samples_follow_the_distribution() -> None:
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(20_000, 3).contiguous()
    out = torch.tensor(sample(logits, [SamplingParams()] * 20_000, [None] * 20_000))
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

    def draw(batch: int) -> list[int]:
        g = torch.Generator().manual_seed(7)
        rows = logits.expand(batch, 1000).contiguous()
        return [sample(rows, [params] * batch, [g] + [None] * (batch - 1))[0] for _ in range(10)]

    assert draw(1) == draw(1) == draw(5)
