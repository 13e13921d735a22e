"""Starting the dedicated embedding model the settings ask for (or none), for the app's lifespan.

The encoder module imports torch, so it is imported only when `--embedding-model` is set."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from app.settings import Settings

if TYPE_CHECKING:
    from model_runtime.encoder import AsyncEncoder, ResolvedEncoder

logger = logging.getLogger(__name__)


def resolved_encoder(settings: Settings) -> ResolvedEncoder | None:
    """Where the embedding model is, or None without `--embedding-model`. Raises ValueError for a
    folder that cannot be served, before anything is loaded."""
    if settings.embedding_model is None:
        return None
    from model_runtime.encoder import resolve_encoder

    return resolve_encoder(settings.embedding_model, settings.embedding_model_name)


def encoder_first(settings: Settings) -> bool:
    """Whether the embedding model loads before the text engine: when it runs on the GPU, so that
    its weights are resident when the engine measures free memory for its KV cache."""
    if settings.embedding_model is None:
        return False
    from model_runtime.images import runs_on_cuda

    return runs_on_cuda(settings.device)


async def start_encoder(settings: Settings, taken: Collection[str] = ()) -> AsyncEncoder | None:
    """Loads the embedding model, if any. `taken` are the ids of the other served models: one id
    naming two models would make `model` in a request ambiguous, so that is a ValueError."""
    resolved = resolved_encoder(settings)
    if resolved is None:
        return None
    if resolved.served_name in taken:
        raise ValueError(
            f"the embedding model's id {resolved.served_name!r} is already another served model's; "
            "choose another with --embedding-model-name"
        )
    from model_runtime.encoder import AsyncEncoder

    logger.info("loading the embedding model %s (%s)", resolved.served_name, resolved.model_dir)
    encoder = AsyncEncoder(resolved, settings.device)
    try:
        await encoder.start()  # loads the weights on the encoder's own thread
    except BaseException:
        await encoder.shutdown()
        raise
    return encoder
