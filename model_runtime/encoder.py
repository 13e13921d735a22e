"""A dedicated embedding model (`--embedding-model`): an encoder such as BERT, RoBERTa, XLM-R or
MPNet from a local Hugging Face folder, pooled as its sentence-transformers files say.

The model is a `transformers.AutoModel` loaded from safetensors only, from local files only. It
runs on a thread of its own (never the event loop, never the engine thread), one batch at a time
under `torch.inference_mode()`. Inputs longer than the model's positions are refused, not
truncated: a silently shortened text would embed something the client did not send.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from model_runtime.api import ContextLengthExceeded, Embeddings, InvalidPrompt, ModelInfo

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
MAX_BATCH_TOKENS = 8192  # padded tokens in one forward pass: bounds the [B, T, hidden] activations
# Position ids of these start after the padding index (RoBERTa's scheme): 514 positions hold 512.
PADDING_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet"})
SUPPORTED_MODULES = frozenset({"Transformer", "Pooling", "Normalize"})


class Pooling(enum.Enum):
    MEAN = "mean"  # the average over the real (unpadded) tokens
    CLS = "cls"  # the first token's state
    MAX = "max"  # the per-dimension maximum over the real tokens
    LAST_TOKEN = "lasttoken"  # the last real token's state


# sentence-transformers' 1_Pooling/config.json flags. mean_sqrt_len differs from mean only by a
# per-input scale, which normalisation removes, so it is read as mean.
POOLING_FLAGS = {
    "pooling_mode_mean_tokens": Pooling.MEAN,
    "pooling_mode_mean_sqrt_len_tokens": Pooling.MEAN,
    "pooling_mode_cls_token": Pooling.CLS,
    "pooling_mode_max_tokens": Pooling.MAX,
    "pooling_mode_lasttoken": Pooling.LAST_TOKEN,
}


@dataclass(frozen=True)
class ResolvedEncoder:
    model_dir: Path  # the folder holding config.json, the tokenizer and the safetensors weights
    served_name: str
    pooling: Pooling


def resolve_encoder(spec: str, served_name: str | None = None) -> ResolvedEncoder:
    """A local folder -> what to load and how to pool. Raises ValueError for anything that cannot be
    served, before any weight is read."""
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{spec!r} is not a folder; embedding models load from local folders only")
    folder = folder.resolve()
    model_dir, pooling = _read_sentence_transformers(folder)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir}: no config.json, not a Hugging Face model folder")
    weights = [f for f in model_dir.iterdir() if f.is_file()]
    if not any(f.suffix == ".safetensors" for f in weights):
        if any(f.suffix in PICKLE_SUFFIXES for f in weights):
            raise ValueError(
                f"{model_dir}: weights only in pickle format are refused (they can run code); "
                "convert them to safetensors"
            )
        raise ValueError(f"{model_dir}: no .safetensors weights")
    return ResolvedEncoder(model_dir, served_name or folder.name.lower(), pooling)


def _read_sentence_transformers(folder: Path) -> tuple[Path, Pooling]:
    """(model folder, pooling) from modules.json and its Pooling module's config.json; a plain
    transformers folder is pooled by the mean over its attention mask."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return folder, Pooling.MEAN
    model_dir, pooling = folder, Pooling.MEAN
    for module in json.loads(modules_file.read_text()):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in SUPPORTED_MODULES:
            raise ValueError(
                f"{modules_file}: the sentence-transformers module {kind!r} is not supported "
                f"(supported: {', '.join(sorted(SUPPORTED_MODULES))})"
            )
        path = folder / module.get("path", "")
        if kind == "Transformer":
            model_dir = path
        elif kind == "Pooling":
            pooling = _read_pooling(path / "config.json")
    return model_dir, pooling


def _read_pooling(config_file: Path) -> Pooling:
    config = json.loads(config_file.read_text())
    mode = config.get("pooling_mode")  # newer sentence-transformers also write the mode by name
    if isinstance(mode, str):
        for pooling in Pooling:
            if mode.replace("_", "") in (pooling.value, f"{pooling.value}tokens", f"{pooling.value}token"):
                return pooling
    chosen = {POOLING_FLAGS[k] for k, on in config.items() if on is True and k in POOLING_FLAGS}
    unsupported = [
        k
        for k, on in config.items()
        if on is True and k.startswith("pooling_mode_") and k not in POOLING_FLAGS
    ]
    if unsupported or len(chosen) > 1:
        raise ValueError(
            f"{config_file}: pooling {', '.join(unsupported) or 'combined modes'} is not supported "
            "(one of mean, cls, max, lasttoken)"
        )
    return chosen.pop() if chosen else Pooling.MEAN


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """hidden: [B, T, H], mask: [B, T] (1 for real tokens, right-padded) -> [B, H]."""
    if pooling is Pooling.CLS:
        return hidden[:, 0]
    if pooling is Pooling.LAST_TOKEN:
        last = mask.sum(dim=1) - 1  # [B]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    real = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    if pooling is Pooling.MAX:
        return hidden.masked_fill(real == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * real).sum(dim=1) / real.sum(dim=1)


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    return torch.device(device)


class Encoder:
    """The loaded model and tokenizer. Blocking; call from one thread at a time."""

    def __init__(
        self,
        resolved: ResolvedEncoder,
        device: str = "auto",
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.pooling = resolved.pooling
        self.max_batch_tokens = max_batch_tokens
        self.device = _device(device)
        config = AutoConfig.from_pretrained(resolved.model_dir, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.model_dir, local_files_only=True)
        # float32: encoders are small, and their embeddings are compared across requests.
        self.model = AutoModel.from_pretrained(
            resolved.model_dir, local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
        self.model.to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # A fast tokenizer's first call may switch off a truncation or padding its tokenizer.json
        # sets, a write to the shared Rust object. Made here, on the loading thread, every later
        # call only reads it, so the event loop (`/tokenize`) and the encoder's thread (`embed`)
        # may tokenize at the same time.
        self.encode("")
        vocab_size = self.model.get_input_embeddings().num_embeddings
        self.dimensions = int(config.hidden_size)
        self.info = ModelInfo(
            id=resolved.served_name,
            max_model_len=_max_tokens(config, self.tokenizer),
            created=int(time.time()),
            vocab_size=vocab_size,
        )
        logger.info(
            "embedding model %s: %s, %d dimensions, %s pooling, up to %d tokens, on %s",
            self.info.id,
            type(self.model).__name__,
            self.dimensions,
            self.pooling.value,
            self.info.max_model_len,
            self.device,
        )

    def encode(self, text: str) -> list[int]:
        """The model's tokens for `text`, with its special tokens ([CLS] ... [SEP] for BERT)."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        """Ids -> text with the model's tokenizer, special tokens skipped. The ids must be in its
        vocabulary (the caller checks `info.vocab_size`)."""
        text: str = self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        return text

    def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        token_ids = [self.encode(i) if isinstance(i, str) else list(i) for i in inputs]
        self.validate(token_ids)
        vectors = self.embed_ids(token_ids)
        return Embeddings(vectors=vectors, prompt_tokens=sum(len(ids) for ids in token_ids))

    def validate(self, token_ids: Sequence[Sequence[int]]) -> None:
        vocab, limit = self.info.vocab_size, self.info.max_model_len
        for ids in token_ids:
            if not ids:
                raise InvalidPrompt("an input is empty", param="input")
            if min(ids) < 0 or max(ids) >= vocab:
                raise InvalidPrompt(
                    f"token ids must be in [0, {vocab}) for the embedding model {self.info.id}", param="input"
                )
            if len(ids) > limit:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {limit} tokens; an input has {len(ids)}.",
                    param="input",
                )

    @torch.inference_mode()
    def embed_ids(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """One unit-length vector per input. Inputs of similar length share a padded batch."""
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]), reverse=True)
        out: list[list[float]] = [[] for _ in token_ids]
        start = 0
        while start < len(order):
            longest = len(token_ids[order[start]])
            size = max(1, self.max_batch_tokens // longest)
            chunk = order[start : start + size]
            vectors = self._forward([token_ids[i] for i in chunk]).tolist()
            for i, vector in zip(chunk, vectors, strict=True):
                out[i] = vector
            start += size
        return out

    def _forward(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:  # [B, hidden] float32
        longest = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)  # [B, T]
        mask = torch.zeros((len(batch), longest), dtype=torch.long)  # [B, T]
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, hidden]
        # Always unit length, whether or not a sentence-transformers folder has a Normalize module:
        # OpenAI's embeddings are, clients take the dot product as the cosine similarity, and
        # vLLM and TEI normalise by default too. Cosine similarity itself is unchanged.
        return F.normalize(pool(hidden, mask, self.pooling).float(), dim=-1)


def _max_tokens(config: Any, tokenizer: Any) -> int:
    """The longest input the model takes: its position embeddings, less RoBERTa-style offsets, and
    the tokenizer's own limit when it states one."""
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = (config.pad_token_id or 0) + 1 if config.model_type in PADDING_OFFSET_TYPES else 0
        limits.append(positions - offset)
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < 1_000_000:  # unset limits are huge sentinels
        limits.append(stated)
    return min(limits) if limits else 512


class AsyncEncoder:
    """The encoder's asyncio face: loading and every batch run on one thread of its own, so the
    event loop (and the streams it serves) never waits on a forward pass."""

    def __init__(
        self, resolved: ResolvedEncoder, device: str = "auto", max_batch_tokens: int = MAX_BATCH_TOKENS
    ) -> None:
        self.resolved = resolved
        self._device = device
        self._max_batch_tokens = max_batch_tokens
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atenea-encoder")
        self._encoder: Encoder | None = None
        self._closed = False

    async def start(self) -> None:
        """Loads the model on the encoder's thread; raises if it fails."""
        loop = asyncio.get_running_loop()
        self._encoder = await loop.run_in_executor(
            self._executor, Encoder, self.resolved, self._device, self._max_batch_tokens
        )

    async def shutdown(self) -> None:
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, True)

    def is_alive(self) -> bool:
        return self._encoder is not None and not self._closed

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            raise RuntimeError("the embedding model is not loaded")
        return self._encoder

    # -- EncoderClient --------------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self.encoder.info

    # Tokenizing runs on the caller's thread, not the encoder's: a fast (Rust) tokenizer takes
    # microseconds per prompt, as the language model's tokenizer does on the event loop, while a
    # trip through the encoder's thread would queue `/tokenize` behind whole forward passes.
    def encode(self, text: str) -> list[int]:
        return self.encoder.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.encoder.decode(token_ids)

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        if not self.is_alive():
            raise RuntimeError("the embedding model is not running")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.encoder.embed, list(inputs))
