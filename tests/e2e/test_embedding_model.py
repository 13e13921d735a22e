"""`atenea serve --embedding-model`: the real server with a tiny random BERT beside the default
model, through the official openai client."""

from __future__ import annotations

import math
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import MODEL
from tests.e2e.own_server import own_server
from tests.model_runtime.tiny_encoder import HIDDEN, write_tiny_bert

pytestmark = pytest.mark.e2e


def test_serve_with_a_dedicated_embedding_model(tmp_path: Path) -> None:
    folder = write_tiny_bert(tmp_path / "Tiny-BERT")
    with own_server(tmp_path, "--embedding-model", str(folder), "--image-model", "none") as server:
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [MODEL, "tiny-bert"]

        result = client.embeddings.create(model="tiny-bert", input=["the cat sat on a mat", "dog ran"])
        assert result.model == "tiny-bert"
        assert [item.index for item in result.data] == [0, 1]
        for item in result.data:
            assert len(item.embedding) == HIDDEN
            assert math.isclose(math.sqrt(sum(x * x for x in item.embedding)), 1.0, rel_tol=1e-5)
        assert result.data[0].embedding != result.data[1].embedding
        assert result.usage.prompt_tokens == 8 + 4  # the BERT tokenizer's, [CLS] and [SEP] included

        # The language model still embeds with its own width, and still chats.
        own = client.embeddings.create(model=MODEL, input="the cat sat on a mat")
        assert len(own.data[0].embedding) != HIDDEN
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="tiny-bert", messages=[{"role": "user", "content": "hi"}])
        assert bad.value.code == "model_not_supported"
        chat = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert chat.choices[0].message.content is not None
