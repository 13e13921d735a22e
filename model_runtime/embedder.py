"""Whole-text passes of the served model outside the generation batch: sentence embeddings (the
final hidden states, mean-pooled and L2-normalised) and the log-probabilities of a prompt's tokens.

The text runs through the same layers as generation, with a scratch KV cache of its own length, so
it takes none of the engine's blocks. Attention is causal (the model's own), so each position sees
only what precedes it; mean pooling over all positions is the usual way to read a decoder-only
model as an embedder. Runs on the engine thread, between steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model_runtime.attention import AttentionMetadata, KVCache, PrefillSlice
from model_runtime.models.llama import LlamaModel

LOGIT_ROWS = 256  # prompt positions turned into logits at once: bounds the [rows, V] buffer


@torch.inference_mode()
def embed(model: LlamaModel, token_ids: list[int]) -> torch.Tensor:  # [hidden] float32, unit norm
    return F.normalize(hidden_states(model, token_ids).float().mean(dim=0), dim=0)


@torch.inference_mode()
def prompt_logprobs(
    model: LlamaModel, token_ids: list[int], k: int
) -> list[tuple[float, list[tuple[int, float]]]]:
    """For each prompt token after the first: its log-probability given the tokens before it, and
    the `k` most likely tokens at that position (the model's raw distribution)."""
    hidden = hidden_states(model, token_ids)  # [T, hidden]
    targets = torch.tensor(token_ids[1:], dtype=torch.long, device=hidden.device)
    out: list[tuple[float, list[tuple[int, float]]]] = []
    for start in range(0, len(token_ids) - 1, LOGIT_ROWS):
        rows = slice(start, min(start + LOGIT_ROWS, len(token_ids) - 1))
        logp = torch.log_softmax(model.lm_head(hidden[rows]).float(), dim=-1)  # [R, V]
        chosen = logp.gather(1, targets[rows][:, None]).squeeze(1).tolist()
        values, ids = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
        for lp, top_v, top_i in zip(chosen, values.tolist(), ids.tolist(), strict=True):
            out.append((lp, list(zip(top_i, top_v, strict=True))))
    return out


def hidden_states(
    model: LlamaModel, token_ids: list[int]
) -> torch.Tensor:  # [T, hidden], after the final norm
    param = next(model.parameters())
    device = param.device
    dtype = model.embed_tokens.weight.dtype
    s = model.shape
    t = len(token_ids)
    caches = [
        KVCache(
            torch.empty(t, s.num_kv_heads, s.head_dim, dtype=dtype, device=device),
            torch.empty(t, s.num_kv_heads, s.head_dim, dtype=dtype, device=device),
        )
        for _ in range(s.num_layers)
    ]
    # One prefill chunk from position 0: plain causal attention over its own keys.
    meta = AttentionMetadata(
        slot_mapping=torch.arange(t, device=device),
        num_decodes=0,
        decode_slots=None,
        decode_mask=None,
        prefills=[PrefillSlice(0, t, torch.empty(0, dtype=torch.long, device=device), None)],
    )
    ids = torch.tensor(token_ids, dtype=torch.long, device=device)
    return model.norm(model.hidden_states(ids, torch.arange(t, device=device), caches, meta))
