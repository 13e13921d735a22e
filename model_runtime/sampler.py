"""Pure functions over a step's logits: penalties, logit bias, grammar masks, temperature, top-k,
top-p, min-p, then the draw, and the log-probabilities of the distribution drawn from.

The draw inverts each row's CDF at one uniform number: a cumulative sum and a binary search, with
no host sync, and one random number per row (an exponential race over the whole vocabulary costs
~30 ms per step on a CPU for a 49k vocabulary at batch 16). Seeded requests draw their number from
their own generator, so a request's randomness does not depend on its batch companions.

Everything beyond temperature and the draw runs only for the rows that ask for it, and only when
some row of the batch does: a batch of plain requests pays a few `any()` over its parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_runtime.api import SamplingParams
from model_runtime.kernels.cpu_extension import load_kernels

# Stands in for -inf in reported log-probabilities: JSON has no infinity.
MIN_LOGPROB = -9999.0


@dataclass
class SamplingBatch:
    """What the sampler needs to know about each row besides its logits."""

    params: Sequence[SamplingParams]
    generators: Sequence[torch.Generator | None]
    # Each row's tokens (prompt then output) and prompt length: read only for penalized rows.
    token_ids: Sequence[Sequence[int]] = ()
    num_prompt_tokens: Sequence[int] = ()
    # [S, ceil(V / 32)] int32 bitmask of allowed tokens (bit i of word j: token 32j + i), or None
    # when no row is constrained; unconstrained rows are all ones.
    allowed: torch.Tensor | None = None


@dataclass(frozen=True)
class RowLogprobs:
    logprob: float  # of the sampled token
    top: list[tuple[int, float]]  # (token id, logprob), most likely first


@dataclass
class SampleResult:
    tokens: list[int]
    logprobs: list[RowLogprobs | None]  # per row; None for rows that did not ask


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SampleResult:  # logits: [S, V] float32
    """Each row's token and, for the rows that ask, its logprobs; ends with one host sync."""
    params = batch.params
    wants_logprobs = [p.logprobs is not None for p in params]
    if not any(wants_logprobs):
        return SampleResult(draw(logits, batch).tolist(), [None] * len(params))
    logits = process_logits(logits, batch)
    probs = probabilities(logits, params)
    tokens = _choose(logits, probs, batch, keep_probs=True)
    logprobs: list[RowLogprobs | None] = [None] * len(params)
    rows = [i for i, w in enumerate(wants_logprobs) if w]
    for row, result in zip(rows, _logprobs(probs, tokens, rows, params), strict=True):
        logprobs[row] = result
    return SampleResult(tokens.tolist(), logprobs)


def draw(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:  # [S, V] -> [S] long
    """Each row's token, left where the logits are: no host sync, so a GPU's next step can take
    them as its inputs before the host has read them."""
    logits = process_logits(logits, batch)
    if all(p.greedy for p in batch.params):
        return _argmax(logits)
    return _choose(logits, probabilities(logits, batch.params), batch, keep_probs=False)


def _choose(
    logits: torch.Tensor, probs: torch.Tensor, batch: SamplingBatch, keep_probs: bool
) -> torch.Tensor:  # [S]
    """Greedy rows take their argmax; the others invert their CDF at a uniform number."""
    greedy = [p.greedy for p in batch.params]
    if all(greedy):
        return _argmax(logits)
    # In place unless the caller still needs the probabilities (for logprobs).
    cdf = probs.cumsum(dim=-1) if keep_probs else probs.cumsum_(dim=-1)  # [S, V]
    # Scaled by each row's total so rounding in the sum never leaves u past the last bucket.
    u = _uniforms(len(greedy), batch.generators, logits.device)[:, None] * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=logits.shape[-1] - 1)
    if any(greedy):
        rows = on_device([i for i, g in enumerate(greedy) if g], logits.device)
        tokens[rows] = _argmax(logits[rows])
    return tokens


def on_device(
    values: Sequence[float] | Sequence[int], device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A small host list as a tensor on `device`, copied without blocking: `torch.tensor(...,
    device="cuda")` copies synchronously, so the host would wait there for every kernel queued
    before it (the whole model step) instead of queueing the sampler's kernels behind them."""
    tensor = torch.tensor(values, dtype=dtype)
    return tensor if device.type == "cpu" else tensor.to(device, non_blocking=True)


def _argmax(logits: torch.Tensor) -> torch.Tensor:  # [S, V] -> [S]
    """torch.argmax(dim=-1), from the CPU kernel where it is built (0.2 against 0.8 ms at 16 x 49k)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        kernels = load_kernels()
        if kernels is not None:
            return kernels.argmax_rows(logits)
    return logits.argmax(dim=-1)


def process_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Penalties, logit bias and the grammar mask: what shapes the logits before temperature."""
    params = batch.params
    penalized = [i for i, p in enumerate(params) if p.penalized]
    biased = [i for i, p in enumerate(params) if p.logit_bias]
    if not penalized and not biased and batch.allowed is None:
        return logits
    logits = logits.clone()
    for row in penalized:
        _penalize(logits[row], params[row], batch.token_ids[row], batch.num_prompt_tokens[row])
    for row in biased:
        ids, values = zip(*params[row].logit_bias, strict=True)
        logits[row, on_device(ids, logits.device)] += on_device(values, logits.device, logits.dtype)
    if batch.allowed is not None:
        # The grammar's mask is built on the host; a GPU's logits need it on the device.
        allowed = batch.allowed.to(logits.device, non_blocking=True)
        logits.masked_fill_(~unpack_bitmask(allowed, logits.shape[-1]), float("-inf"))
    return logits


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[S, W] int32 words -> [S, V] bool (token 32j + i allowed when bit i of word j is set)."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask[:, :, None] >> shifts) & 1  # [S, W, 32]
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


def _penalize(row: torch.Tensor, p: SamplingParams, token_ids: Sequence[int], num_prompt: int) -> None:
    """In place on one row `[V]`. OpenAI: logit -= count * frequency + (count > 0) * presence,
    counting generated tokens only. Repetition (transformers' definition) covers the prompt too."""
    vocab = row.shape[0]
    if p.presence_penalty or p.frequency_penalty:
        output = on_device(token_ids[num_prompt:], row.device, torch.long)
        counts = torch.bincount(output, minlength=vocab)[:vocab].to(row.dtype)
        row -= counts * p.frequency_penalty + (counts > 0).to(row.dtype) * p.presence_penalty
    if p.repetition_penalty != 1.0:
        seen = on_device(sorted(set(token_ids)), row.device, torch.long)
        seen = seen[seen < vocab]
        values = row[seen]
        row[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)


def probabilities(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution each row samples from: temperature, then the top-k / top-p / min-p filters.

    Greedy rows get temperature 1: their argmax is what they take, and these are the
    probabilities their logprobs report."""
    device = logits.device
    temperature = on_device([p.temperature or 1.0 for p in params], device, torch.float32)
    logits = logits / temperature[:, None]
    if any(p.top_k is not None for p in params) or any(p.top_p < 1.0 for p in params):
        logits = _top_k_top_p(logits, params)
    probs = torch.softmax(logits, dim=-1)
    if any(p.min_p > 0.0 for p in params):
        min_p = on_device([p.min_p for p in params], device, torch.float32)
        threshold = probs.amax(dim=-1, keepdim=True) * min_p[:, None]
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs


def _logprobs(
    probs: torch.Tensor, tokens: torch.Tensor, rows: list[int], params: Sequence[SamplingParams]
) -> list[RowLogprobs]:
    """Log-probabilities of the distribution each row was drawn from (min-p's cut renormalised,
    as the draw renormalises it)."""
    index = on_device(rows, probs.device)
    sub = probs[index]
    logp = (sub / sub.sum(dim=-1, keepdim=True)).log_()  # [R, V]
    sampled = logp.gather(1, tokens[index][:, None]).squeeze(1)
    k = max(params[r].logprobs or 0 for r in rows)
    top_values, top_ids = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
    sampled_list = sampled.clamp(min=MIN_LOGPROB).tolist()
    values_list = top_values.clamp(min=MIN_LOGPROB).tolist()
    ids_list = top_ids.tolist()
    results = []
    for i, row in enumerate(rows):
        wanted = params[row].logprobs or 0
        top = list(zip(ids_list[i][:wanted], values_list[i][:wanted], strict=True))
        results.append(RowLogprobs(sampled_list[i], top))
    return results


# On a CPU, top-k / top-p look at the most likely tokens first. Sorting a whole 49k-token row costs
# ~35 ms at 16 rows on 2 cores, more than the model's step; `topk` of this many candidates costs
# 1-5 ms, and the kept set nearly always lies inside them. Where it does not (a flat distribution,
# a top_k beyond the candidates), the next size is tried, then the full sort. A GPU sorts at once,
# and checking whether the candidates sufficed would cost a host sync.
CANDIDATES = (64, 1024)


def _top_k_top_p(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """-inf outside each row's top-k / top-p set (the smallest prefix, by probability, whose mass
    reaches top_p); rows that filter nothing are left as they are."""
    vocab = logits.shape[-1]
    top_k = [min(p.top_k or vocab, vocab) for p in params]
    rows = [i for i, p in enumerate(params) if top_k[i] < vocab or p.top_p < 1.0]
    if not rows:  # a top_k of the vocabulary's size or more filters nothing
        return logits
    index = on_device(rows, logits.device, torch.long)
    sub = logits[index] if len(rows) < len(params) else logits
    k = on_device([top_k[i] for i in rows], logits.device)
    top_p = on_device([params[i].top_p for i in rows], logits.device, torch.float32)
    filtered = None
    for size in CANDIDATES if logits.device.type == "cpu" else ():
        if size >= vocab or any(size < top_k[i] < vocab for i in rows):
            continue
        filtered = _filter_candidates(sub, k, top_p, size)
        if filtered is not None:
            break
    if filtered is None:
        filtered = _filter_sorted(sub, k, top_p)
    if len(rows) == len(params):
        return filtered
    out = logits.clone()
    out[index] = filtered
    return out


def _kept(
    sorted_logits: torch.Tensor, k: torch.Tensor, top_p: torch.Tensor, log_norm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Over logits sorted in descending order: which to keep, and the mass of all of them, with
    probabilities exp(logit - log_norm) (log_norm: the log of the row's normaliser)."""
    ranks = torch.arange(sorted_logits.shape[-1], device=sorted_logits.device)[None, :]
    drop = ranks >= k[:, None]
    probs = (sorted_logits.masked_fill(drop, float("-inf")) - log_norm).exp()
    mass = probs.cumsum(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it
    # already does. The top token is always kept.
    drop |= (mass - probs) >= top_p[:, None]
    drop[:, 0] = False
    return ~drop, mass[:, -1]


def _filter_candidates(
    logits: torch.Tensor, k: torch.Tensor, top_p: torch.Tensor, size: int
) -> torch.Tensor | None:
    """The filter from each row's `size` most likely tokens, or None where a row's kept set may
    reach past them: its top_k is not within them and their mass falls short of its top_p."""
    values, order = logits.topk(size, dim=-1)  # sorted, most likely first
    within = k <= size
    # A top-k row's distribution is its k best; otherwise the whole row is (a pass over the row,
    # skipped where every row is a top-k one).
    ranks = torch.arange(size, device=logits.device)[None, :]
    log_norm = torch.logsumexp(values.masked_fill(ranks >= k[:, None], float("-inf")), dim=-1, keepdim=True)
    if not bool(within.all()):
        whole = torch.logsumexp(logits, dim=-1, keepdim=True)
        log_norm = torch.where(within[:, None], log_norm, whole)
    kept, mass = _kept(values, k, top_p, log_norm)
    if not bool((within | (mass >= top_p)).all()):
        return None
    out = torch.full_like(logits, float("-inf"))
    return out.scatter_(-1, order, values.masked_fill(~kept, float("-inf")))


def _filter_sorted(logits: torch.Tensor, k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    best_k = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
    kept, _ = _kept(sorted_logits, k, top_p, torch.logsumexp(best_k, dim=-1, keepdim=True))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits.masked_fill(~kept, float("-inf")))


def _uniforms(
    n: int, generators: Sequence[torch.Generator | None], device: torch.device
) -> torch.Tensor:  # [n] in [0, 1)
    u = torch.rand(n, device=device)
    for row, generator in enumerate(generators):
        if generator is not None:
            u[row] = torch.rand(1, device=device, generator=generator)[0]
    return u
