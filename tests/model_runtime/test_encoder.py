"""The dedicated embedding model: tiny random BERTs against transformers' own forward pass."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import AutoTokenizer, BertModel, RobertaConfig

from model_runtime import ContextLengthExceeded, InvalidPrompt
from model_runtime.encoder import AsyncEncoder, Encoder, Pooling, _max_tokens, pool, resolve_encoder
from tests.model_runtime.tiny_encoder import HIDDEN, MAX_POSITIONS, WORDS, write_tiny_bert

TEXTS = ["the cat sat on a mat", "hello", "red blue green bird sang a song in the park", "dog ran"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-BERT") / "Tiny-BERT")


@pytest.fixture(scope="module")
def cls_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("cls") / "tiny-cls", cls_pooling=True)


@pytest.fixture(scope="module")
def encoder(bert: Path) -> Encoder:
    return Encoder(resolve_encoder(str(bert)), "cpu")


def reference_hidden(folder: Path, text: str) -> tuple[list[int], torch.Tensor]:
    """transformers' BertModel and tokenizer, used directly: (token ids, [T, hidden])."""
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = BertModel.from_pretrained(folder, local_files_only=True).eval()
    ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return ids, hidden


def test_served_name_is_the_folder_name_lower_cased(bert: Path) -> None:
    assert resolve_encoder(str(bert)).served_name == "tiny-bert"
    assert resolve_encoder(str(bert), "my-embedder").served_name == "my-embedder"
    assert resolve_encoder(str(bert)).pooling is Pooling.MEAN


def test_mean_pooled_unit_vector_matches_transformers(bert: Path, encoder: Encoder) -> None:
    ids, hidden = reference_hidden(bert, TEXTS[0])
    assert ids[0] == WORDS.index("[CLS]") and ids[-1] == WORDS.index("[SEP]") and len(ids) == 8
    expected = F.normalize(hidden.mean(dim=0), dim=0)
    result = encoder.embed([TEXTS[0]])
    assert result.prompt_tokens == len(ids)
    got = torch.tensor(result.vectors[0])
    assert got.shape == (HIDDEN,)
    assert_close(got, expected)
    assert_close(got.norm(), torch.tensor(1.0))
    # Token ids are embedded as given: the same ids give the same vector.
    assert_close(torch.tensor(encoder.embed([ids]).vectors[0]), expected)


def test_sentence_transformers_cls_pooling_is_honoured(cls_bert: Path) -> None:
    resolved = resolve_encoder(str(cls_bert))
    assert resolved.pooling is Pooling.CLS
    encoder = Encoder(resolved, "cpu")
    _, hidden = reference_hidden(cls_bert, TEXTS[2])
    got = torch.tensor(encoder.embed([TEXTS[2]]).vectors[0])
    assert_close(got, F.normalize(hidden[0], dim=0))
    # And not the mean, which the same weights would give without the pooling config.
    assert not torch.allclose(got, F.normalize(hidden.mean(dim=0), dim=0), atol=1e-3)


def test_mixed_length_batch_equals_one_at_a_time(bert: Path) -> None:
    # A small token budget splits the batch into several padded forward passes too.
    for budget in (8192, 20):
        encoder = Encoder(resolve_encoder(str(bert)), "cpu", max_batch_tokens=budget)
        batch = encoder.embed(TEXTS).vectors
        for text, vector in zip(TEXTS, batch, strict=True):
            assert_close(torch.tensor(vector), torch.tensor(encoder.embed([text]).vectors[0]))


def test_over_long_input_is_rejected(encoder: Encoder) -> None:
    assert encoder.info.max_model_len == MAX_POSITIONS
    longest = [WORDS.index("cat")] * MAX_POSITIONS
    assert len(encoder.embed([longest]).vectors[0]) == HIDDEN
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 64 tokens") as err:
        encoder.embed(["hello", longest + [WORDS.index("dog")]])
    assert err.value.param == "input"
    with pytest.raises(ContextLengthExceeded):
        encoder.embed([" ".join(["cat"] * MAX_POSITIONS)])  # 64 words + [CLS] and [SEP]


@pytest.mark.parametrize("ids", [[5, len(WORDS)], [-1, 5], []])
def test_token_ids_outside_the_vocabulary_are_rejected(encoder: Encoder, ids: list[int]) -> None:
    assert encoder.info.vocab_size == len(WORDS)
    with pytest.raises(InvalidPrompt) as err:
        encoder.embed([[5, 6], ids])
    assert err.value.param == "input"


def test_pickle_only_folder_is_refused(bert: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((bert / name).read_bytes())
    model = BertModel.from_pretrained(bert, local_files_only=True)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle format are refused"):
        resolve_encoder(str(folder))


def test_unservable_folders_are_refused(bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a folder"):
        resolve_encoder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no config.json"):
        resolve_encoder(str(tmp_path))
    dense = tmp_path / "dense"
    dense.mkdir()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (dense / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="'Dense' is not supported"):
        resolve_encoder(str(dense))


def test_pooling_modes_read_from_sentence_transformers(tmp_path: Path) -> None:
    def pooling_of(config: dict[str, object]) -> Pooling:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        (folder / "1_Pooling").mkdir(parents=True)
        modules = [{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"")
        return resolve_encoder(str(folder)).pooling

    assert pooling_of({"pooling_mode_mean_tokens": True}) is Pooling.MEAN
    assert pooling_of({"pooling_mode_lasttoken": True}) is Pooling.LAST_TOKEN
    assert pooling_of({"pooling_mode_max_tokens": True}) is Pooling.MAX
    assert pooling_of({"pooling_mode": "cls"}) is Pooling.CLS
    with pytest.raises(ValueError, match="not supported"):
        pooling_of({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True})
    with pytest.raises(ValueError, match="pooling_mode_weightedmean_tokens"):
        pooling_of({"pooling_mode_weightedmean_tokens": True})


def test_pooling_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])  # [1, 3, 2]; the last is padding
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, Pooling.MEAN).tolist() == [[2.0, 2.0]]
    assert pool(hidden, mask, Pooling.CLS).tolist() == [[1.0, 0.0]]
    assert pool(hidden, mask, Pooling.MAX).tolist() == [[3.0, 4.0]]
    assert pool(hidden, mask, Pooling.LAST_TOKEN).tolist() == [[3.0, 4.0]]


def test_roberta_positions_start_after_the_padding_index() -> None:
    config = RobertaConfig(max_position_embeddings=514, pad_token_id=1)

    class Unlimited:
        model_max_length = 10**30

    assert _max_tokens(config, Unlimited()) == 512


async def test_async_encoder_runs_off_the_event_loop(bert: Path, encoder: Encoder) -> None:
    async_encoder = AsyncEncoder(resolve_encoder(str(bert)), "cpu")
    await async_encoder.start()
    try:
        threads: list[str] = []
        embed = async_encoder.encoder.embed

        def recording(inputs: list[str | list[int]]):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            return embed(inputs)

        async_encoder.encoder.embed = recording  # type: ignore[method-assign]
        results = await asyncio.gather(*(async_encoder.embed([t]) for t in TEXTS))
        assert threads and all(name.startswith("atenea-encoder") for name in threads)
        assert threading.current_thread().name not in threads
        for text, result in zip(TEXTS, results, strict=True):
            assert_close(torch.tensor(result.vectors[0]), torch.tensor(encoder.embed([text]).vectors[0]))
        with pytest.raises(ContextLengthExceeded):
            await async_encoder.embed([[5] * (MAX_POSITIONS + 1)])
    finally:
        await async_encoder.shutdown()
    assert not async_encoder.is_alive()


async def test_async_encoder_tokenizes_with_the_model_tokenizer(bert: Path, encoder: Encoder) -> None:
    async_encoder = AsyncEncoder(resolve_encoder(str(bert)), "cpu")
    with pytest.raises(RuntimeError, match="not loaded"):
        async_encoder.encode("hello")
    await async_encoder.start()
    try:
        ids = async_encoder.encode("hello world")
        assert ids == encoder.encode("hello world") == [2, WORDS.index("hello"), WORDS.index("world"), 3]
        assert async_encoder.decode(ids) == "hello world"
        # Tokenizing on the event loop while the encoder's thread embeds.
        pending = asyncio.ensure_future(async_encoder.embed(TEXTS * 8))
        assert [async_encoder.encode(t) for t in TEXTS] == [encoder.encode(t) for t in TEXTS]
        assert len((await pending).vectors) == len(TEXTS) * 8
    finally:
        await async_encoder.shutdown()
