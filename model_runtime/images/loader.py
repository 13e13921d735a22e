"""Finding and loading image models: the built-in one, a diffusers folder, or a single checkpoint file.

Only local files, and only safetensors: a pickle checkpoint (`.ckpt`, `.bin`, `.pt`) can run code
when it is loaded, so it is refused rather than opened.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_runtime.images.api import ImageModelInfo, ImageSize
from model_runtime.images.pipeline import DiffusersImageModel

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).parent / "builtin"
DEFAULT_IMAGE_MODEL = "atenea-shapes"
# A model folder may describe itself in this file: {"sizes": ["64x64"], "default_steps": 20,
# "guidance_scale": 4.0}. Without it the native square size and diffusers' defaults apply.
METADATA_FILE = "atenea_image.json"
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
DEFAULT_STEPS = 30
MAX_STEPS = 150


@dataclass(frozen=True)
class ResolvedImageModel:
    path: Path
    served_name: str


def resolve_image_model(spec: str) -> ResolvedImageModel:
    """A built-in name or a local path -> where it is and the id it is served under.
    Raises ValueError for anything that cannot be served."""
    builtin = BUILTIN_DIR / spec
    if "/" not in spec and builtin.is_dir():
        return ResolvedImageModel(builtin, spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ValueError(
            f"{spec!r} is neither a built-in image model ({', '.join(builtin_names())}) nor a local "
            "path; image models load from local files only"
        )
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{path.name}: pickle checkpoints are refused (they can run code); use safetensors")
    if path.is_file() and path.suffix != ".safetensors":
        raise ValueError(f"{path.name}: an image model file must be .safetensors")
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise ValueError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    name = path.stem if path.is_file() else path.name
    return ResolvedImageModel(path.resolve(), name)


def builtin_names() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "model_index.json").is_file())


def runs_on_cuda(device: str) -> bool:
    """Whether an image model loaded for `device` ("auto", "cpu" or "cuda") runs on the GPU."""
    if device == "cpu":
        return False
    import torch

    return device == "cuda" or torch.cuda.is_available()


def load_image_model(
    resolved: ResolvedImageModel,
    device: str = "auto",
    served_name: str | None = None,
    cpu_threads: int | None = None,
) -> DiffusersImageModel:
    """Loads the pipeline onto the device: fp16 on CUDA, fp32 on CPU. Blocking.

    Call it on the thread that will run the model: on a CPU it sets that thread's torch threads
    (OpenMP's count is per calling thread), by default half the cores, so image work and the text
    engine's thread share the cores instead of oversubscribing them; two thread teams spinning on
    the same cores stall each other badly."""
    import torch

    target = torch.device("cuda" if runs_on_cuda(device) else "cpu")
    if target.type == "cpu":
        torch.set_num_threads(cpu_threads or max(1, torch.get_num_threads() // 2))
    dtype = torch.float16 if target.type == "cuda" else torch.float32
    started = time.perf_counter()
    pipeline = (
        _load_single_file(resolved.path, dtype)
        if resolved.path.is_file()
        else _load_folder(resolved.path, dtype)
    )
    pipeline.to(target)
    pipeline.set_progress_bar_config(disable=True)
    meta = _metadata(resolved.path)
    info = ImageModelInfo(
        id=served_name or resolved.served_name,
        sizes=_sizes(pipeline, meta),
        default_steps=int(meta.get("default_steps", DEFAULT_STEPS)),
        max_steps=int(meta.get("max_steps", MAX_STEPS)),
        created=int(time.time()),
    )
    guidance = meta.get("guidance_scale")
    log.info(
        "image model %s loaded from %s on %s (%d threads) in %.1fs; sizes %s",
        info.id,
        resolved.path,
        target,
        torch.get_num_threads(),
        time.perf_counter() - started,
        ", ".join(map(str, info.sizes)),
    )
    return DiffusersImageModel(pipeline, info, target, None if guidance is None else float(guidance))


def _load_folder(path: Path, dtype: Any) -> Any:
    from diffusers import DiffusionPipeline

    _refuse_pickle_only_components(path)
    return DiffusionPipeline.from_pretrained(
        path, torch_dtype=dtype, use_safetensors=True, local_files_only=True
    )


def _refuse_pickle_only_components(path: Path) -> None:
    for component in sorted(p for p in path.iterdir() if p.is_dir()):
        files = [f for f in component.iterdir() if f.is_file()]
        has_pickle = any(f.suffix in PICKLE_SUFFIXES for f in files)
        if has_pickle and not any(f.suffix == ".safetensors" for f in files):
            raise ValueError(
                f"{component}: weights only in pickle format are refused (they can run code); "
                "convert them to safetensors"
            )


def _load_single_file(path: Path, dtype: Any) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors.torch import load_file

    kind = infer_diffusers_model_type(load_file(path))
    cls = StableDiffusionXLPipeline if kind.startswith("xl") else StableDiffusionPipeline
    # The file holds weights only; the components' configs come from a diffusers folder beside it
    # (same name without the suffix) or from the local Hugging Face cache. Nothing is downloaded.
    config_dir = path.with_suffix("")
    kwargs: dict[str, Any] = {}
    if (config_dir / "model_index.json").is_file():
        kwargs["config"] = str(config_dir)
    try:
        return cls.from_single_file(str(path), torch_dtype=dtype, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path.name}: cannot build a {cls.__name__} from this file offline ({exc}). Put the "
            f"pipeline's diffusers configs in {config_dir}/ (model_index.json and component configs), "
            "or pass a diffusers folder instead"
        ) from exc


def _metadata(path: Path) -> dict[str, Any]:
    file = (path if path.is_dir() else path.with_suffix("")) / METADATA_FILE
    if not file.is_file():
        return {}
    meta: dict[str, Any] = json.loads(file.read_text())
    return meta


def _sizes(pipeline: Any, meta: dict[str, Any]) -> tuple[ImageSize, ...]:
    declared = [ImageSize.parse(s) for s in meta.get("sizes", [])]
    if declared and all(declared):
        return tuple(s for s in declared if s is not None)
    # Undeclared: the square size the UNet was trained at, as the pipeline itself defaults to.
    native = int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)
    return (ImageSize(native, native),)
