"""Turn a GGUF file (llama.cpp's format) into a Hugging Face model folder.

The runtime loads one kind of checkpoint: a folder with `config.json`, safetensors weights, a tokenizer
and a chat template. A GGUF carries all of that as metadata plus (usually quantized) tensors, so we
convert it once and from then on treat it like any other folder.

Why not `AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`: in transformers 5 that path needs
`accelerate`, may fetch matmul kernels from the Hub and keeps weights packed (and then refuses to
save them). Reading the tensors with the `gguf` package is a few lines, needs no network and lets us
check every tensor against the model's parameter list. The tokenizer and chat template do come from
transformers (`PreTrainedTokenizerFast.from_pretrained(..., gguf_file=...)`), which knows llama.cpp's
vocabulary formats.

Weights are written in float32: dequantized Q4/Q8 values are `scale * q + min` products that bf16 or
fp16 cannot represent exactly, and the small default model costs ~0.5 GB that way.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from gguf import GGUFReader, ReaderTensor
    from transformers import GenerationConfig, PretrainedConfig

# Shards keep peak memory bounded: a 7B model dequantized to float32 is ~28 GB, written 4 GiB at a time.
MAX_SHARD_BYTES = 4 * 1024**3

# Arrays the config never needs; `contents()` on them costs seconds, so only their length is read.
_BULKY_FIELDS = frozenset(
    {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"}
)


class GGUFConversionError(ValueError):
    """The file is not one we can turn into a model folder faithfully."""


@dataclass(frozen=True)
class _Arch:
    """What differs between the GGUF architectures we convert."""

    gguf_name: str  # `general.architecture` in the file, and gguf-py's name for its tensor table
    model_type: str  # transformers' config model_type
    hf_class: str  # written into config.json "architectures"
    # llama.cpp interleaves Q/K rows of llama-style checkpoints for its RoPE kernel; we undo it.
    permute_qk: bool
    # Whether the config class has a `head_dim` field (Qwen2 derives it from hidden_size / heads).
    has_head_dim: bool


# Keyed by `general.architecture`. Add an entry (and a test) to support another decoder.
SUPPORTED_ARCHS: dict[str, _Arch] = {
    "llama": _Arch("llama", "llama", "LlamaForCausalLM", permute_qk=True, has_head_dim=True),
    "qwen2": _Arch("qwen2", "qwen2", "Qwen2ForCausalLM", permute_qk=False, has_head_dim=False),
    "qwen3": _Arch("qwen3", "qwen3", "Qwen3ForCausalLM", permute_qk=False, has_head_dim=True),
}


def convert_gguf(gguf_path: Path, out_dir: Path, progress: bool = True) -> None:
    """Write a Hugging Face folder for `gguf_path` into `out_dir` (created; should be empty).

    Not atomic by itself: the caller writes into a temporary folder and renames it when this returns.
    """
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    metadata = read_metadata(reader)
    arch = _supported_arch(metadata, gguf_path)
    config = build_config(metadata, [t.name for t in reader.tensors], arch)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_weights(reader, config, arch, out_dir, progress)
    config.save_pretrained(out_dir)
    build_generation_config(metadata).save_pretrained(out_dir)
    write_tokenizer(gguf_path, metadata, out_dir)


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    """Every GGUF key -> value, except the big vocabulary arrays, which become their length."""
    metadata: dict[str, Any] = {}
    for key, field in reader.fields.items():
        metadata[key] = len(field.data) if key in _BULKY_FIELDS else field.contents()
    return metadata


def _supported_arch(metadata: dict[str, Any], path: Path) -> _Arch:
    name = metadata.get("general.architecture")
    if name not in SUPPORTED_ARCHS:
        raise GGUFConversionError(
            f"{path}: GGUF architecture {name!r} is not supported; supported: {sorted(SUPPORTED_ARCHS)}"
        )
    return SUPPORTED_ARCHS[name]


def build_config(metadata: dict[str, Any], tensor_names: list[str], arch: _Arch) -> PretrainedConfig:
    """The transformers config the metadata describes. Anything we cannot express faithfully raises."""
    from transformers import AutoConfig

    prefix = arch.gguf_name

    def key(name: str, default: Any = None) -> Any:
        return metadata.get(f"{prefix}.{name}", default)

    hidden, heads = key("embedding_length"), key("attention.head_count")
    kv_heads = _single_value(key("attention.head_count_kv", heads), "attention.head_count_kv")
    head_dim = key("attention.key_length", hidden // heads)
    rotary_dims = key("rope.dimension_count", head_dim)
    if rotary_dims != head_dim:
        raise GGUFConversionError(
            f"partial rotary embeddings ({rotary_dims} of {head_dim} dims) are not supported"
        )
    if not arch.has_head_dim and head_dim != hidden // heads:
        raise GGUFConversionError(f"{prefix}: head_dim {head_dim} != hidden_size / heads is not supported")

    kwargs: dict[str, Any] = {
        "architectures": [arch.hf_class],
        "vocab_size": key("vocab_size") or metadata["tokenizer.ggml.tokens"],
        "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": _from_f32(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "max_position_embeddings": key("context_length", 2048),
        "rope_parameters": _rope_parameters(metadata, prefix, tensor_names),
        # llama.cpp writes `output.weight` only when the LM head is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }
    if arch.has_head_dim:
        kwargs["head_dim"] = head_dim
    if arch.model_type == "llama":
        kwargs["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        kwargs["mlp_bias"] = "blk.0.ffn_up.bias" in tensor_names
    config = AutoConfig.for_model(arch.model_type, **kwargs)
    config.dtype = "float32"
    return config


def _single_value(value: Any, what: str) -> int:
    # Some files store a per-layer list; a uniform one is fine, a varying one is another architecture.
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise GGUFConversionError(f"per-layer {what} {value} is not supported")
        return int(value[0])
    return int(value)


def _from_f32(value: float) -> float:
    """The float a float32 field was written from: 1e-05, not 9.999999747378752e-06."""
    import numpy as np

    return float(str(np.float32(value)))


def _rope_parameters(metadata: dict[str, Any], prefix: str, tensor_names: list[str]) -> dict[str, Any]:
    theta = _from_f32(metadata.get(f"{prefix}.rope.freq_base", 10000.0))
    scaling = metadata.get(f"{prefix}.rope.scaling.type", "none")
    # Llama 3.1-style scaling is stored as a `rope_freqs` tensor; converting it wrongly would only show
    # at long context, so refuse instead.
    if "rope_freqs.weight" in tensor_names:
        raise GGUFConversionError(
            "GGUF files with a rope_freqs tensor (Llama 3.1 RoPE scaling) are not supported"
        )
    if scaling == "none":
        return {"rope_type": "default", "rope_theta": theta}
    if scaling == "linear":
        factor = _from_f32(metadata[f"{prefix}.rope.scaling.factor"])
        return {"rope_type": "linear", "rope_theta": theta, "factor": factor}
    raise GGUFConversionError(f"RoPE scaling {scaling!r} is not supported")


def build_generation_config(metadata: dict[str, Any]) -> GenerationConfig:
    """Stop on every end token the file names: chat models often end a turn with EOT, not EOS."""
    from transformers import GenerationConfig

    eos_ids: list[int] = []
    for name in ("eos_token_id", "eot_token_id", "eom_token_id"):
        token_id = metadata.get(f"tokenizer.ggml.{name}")
        if token_id is not None and token_id not in eos_ids:
            eos_ids.append(int(token_id))
    return GenerationConfig(
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None),
        pad_token_id=metadata.get("tokenizer.ggml.padding_token_id"),
    )


def tensor_name_plan(config: PretrainedConfig, arch_name: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """GGUF tensor name -> (transformers parameter name, shape), for every parameter the model has.

    The parameter list comes from the model class itself (built on the meta device, so it allocates
    nothing), and gguf-py's own name table maps each one; so a missing or extra tensor is caught.
    """
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    gguf_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch_name)
    name_map = gguf.get_tensor_name_map(gguf_arch, config.num_hidden_layers)

    plan: dict[str, tuple[str, tuple[int, ...]]] = {}
    for hf_name, param in skeleton.state_dict().items():
        if config.tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # tied to the embedding; transformers restores the tie on load
        base, suffix = hf_name.rsplit(".", 1)
        gguf_base = name_map.get_name(base)
        if gguf_base is None:
            raise GGUFConversionError(f"no GGUF name for parameter {hf_name}")
        plan[f"{gguf_base}.{suffix}"] = (hf_name, tuple(param.shape))
    return plan


def write_weights(
    reader: GGUFReader, config: PretrainedConfig, arch: _Arch, out_dir: Path, progress: bool
) -> None:
    """Dequantize every tensor to float32 and write safetensors shards (plus an index if more than one)."""
    from safetensors.torch import save_file

    plan = tensor_name_plan(config, arch.gguf_name)
    tensors = {t.name: t for t in reader.tensors}
    missing = sorted(plan.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - plan.keys())
    if missing or unexpected:
        raise GGUFConversionError(
            f"GGUF tensors do not match the model: missing {missing}, unexpected {unexpected}"
        )

    shards = _plan_shards([(name, math.prod(plan[name][1]) * 4) for name in tensors])
    weight_map: dict[str, str] = {}
    bar = _progress_bar(len(tensors), progress)
    for index, names in enumerate(shards, start=1):
        filename = (
            "model.safetensors" if len(shards) == 1 else f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        )
        shard: dict[str, torch.Tensor] = {}
        for gguf_name in names:
            hf_name, shape = plan[gguf_name]
            shard[hf_name] = _load_tensor(tensors[gguf_name], shape, config, arch)
            weight_map[hf_name] = filename
            bar.update(1)
        save_file(shard, str(out_dir / filename), metadata={"format": "pt"})
        del shard
    bar.close()
    if len(shards) > 1:
        total = sum(math.prod(plan[name][1]) * 4 for name in tensors)
        index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")


def _plan_shards(sized_names: list[tuple[str, int]]) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sized_names:
        if shards[-1] and used + size > MAX_SHARD_BYTES:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _load_tensor(
    tensor: ReaderTensor, shape: tuple[int, ...], config: PretrainedConfig, arch: _Arch
) -> torch.Tensor:
    import numpy as np
    import torch
    from gguf import dequantize

    values = dequantize(tensor.data, tensor.tensor_type)
    if values.size != math.prod(shape):
        raise GGUFConversionError(f"{tensor.name}: {values.size} values, the model expects shape {shape}")
    values = values.reshape(shape)
    if arch.permute_qk and tensor.name.split(".")[-2] in ("attn_q", "attn_k"):
        heads = config.num_attention_heads if ".attn_q." in tensor.name else config.num_key_value_heads
        values = unpermute_qk(values, heads)
    # F32 tensors come back as read-only views of the memory-mapped file; torch wants its own copy.
    return torch.from_numpy(np.array(values, dtype=np.float32, copy=True))


def unpermute_qk(values: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's `permute` (convert_hf_to_gguf.py), which regroups each head's rows in pairs.

    llama.cpp: `w.reshape(heads, 2, rows // heads // 2, ...).swapaxes(1, 2)`; this is its inverse.
    """
    half = values.shape[0] // heads // 2
    return values.reshape(heads, half, 2, *values.shape[1:]).swapaxes(1, 2).reshape(values.shape)


def write_tokenizer(gguf_path: Path, metadata: dict[str, Any], out_dir: Path) -> None:
    """tokenizer.json + tokenizer_config.json + chat_template.jinja, built by transformers from the file."""
    from transformers import PreTrainedTokenizerFast

    # The fast-tokenizer class directly: AutoTokenizer would first rebuild the whole config from the
    # file (seconds) only to end up at this same class.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
    )
    # transformers carries the template over today; the file is the authority if it ever stops.
    template = metadata.get("tokenizer.chat_template")
    if template and not tokenizer.chat_template:
        tokenizer.chat_template = template
    context = metadata.get(f"{metadata['general.architecture']}.context_length")
    if context:
        tokenizer.model_max_length = int(context)
    tokenizer.save_pretrained(out_dir)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Converting tensors", unit="tensor", file=sys.stderr)
