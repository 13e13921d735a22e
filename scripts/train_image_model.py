"""Trains the built-in image model `atenea-shapes` from nothing, reproducibly, on a CPU.

The data are procedurally rendered: one flat shape (circle, square, triangle, ...) in a named colour,
centred with some jitter on a flat background of another named colour, captioned
"a red circle on a blue background". Some colour/shape/background triples are held out of training
entirely; they are written into the model folder so tests can ask for exactly those.

Three stages, each seeded: a small KL autoencoder (64x64 pixels <-> 4x16x16 latents), then a
text-conditioned UNet with a tiny CLIP text encoder over a word-level tokenizer built from the caption
vocabulary, trained together on the latents. The result is an ordinary diffusers
`StableDiffusionPipeline` folder (safetensors), served through the same code path as any other.

    .venv/bin/python scripts/train_image_model.py --out model_runtime/images/builtin/atenea-shapes
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

SIZE = 64
RENDER_SCALE = 4  # shapes are drawn 4x larger and downsampled, for anti-aliased edges
MAX_TOKENS = 12
VAE_CROP = 32

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (130, 40, 170),
    "pink": (245, 140, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "brown": (120, 70, 30),
    "cyan": (40, 210, 230),
}
SHAPES = ["circle", "square", "triangle", "star", "diamond", "cross"]
WORDS = ["a", "an", "on", "background", *COLOURS, *SHAPES]
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
N_HELD_OUT = 24


# ---------------------------------------------------------------- data


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: list[float], offset: float) -> list[tuple[float, float]]:
        pts = []
        for i in range(n * len(radii)):
            a = offset + angle + 2 * math.pi * i / (n * len(radii))
            rr = radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if shape == "square":
        return ring(4, [r], math.pi / 4)
    if shape == "triangle":
        return ring(3, [r], -math.pi / 2)
    if shape == "diamond":
        return ring(4, [r], -math.pi / 2)
    if shape == "star":
        return ring(5, [r, r * 0.45], -math.pi / 2)
    if shape == "cross":
        w = r * 0.38
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
               (-r, -w), (-w, -w)]  # fmt: skip
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(shape)


def render(fg: str, shape: str, bg: str, rng: random.Random) -> np.ndarray:
    """One image, [SIZE, SIZE, 3] uint8."""
    big = SIZE * RENDER_SCALE
    img = Image.new("RGB", (big, big), COLOURS[bg])
    draw = ImageDraw.Draw(img)
    r = big * rng.uniform(0.26, 0.38)
    cx = big / 2 + big * rng.uniform(-0.08, 0.08)
    cy = big / 2 + big * rng.uniform(-0.08, 0.08)
    angle = rng.uniform(-0.25, 0.25)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[fg])
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r, angle), fill=COLOURS[fg])
    return np.asarray(img.resize((SIZE, SIZE), Image.Resampling.LANCZOS))


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(fg: str, shape: str, bg: str) -> str:
    return f"{article(fg)} {fg} {shape} on {article(bg)} {bg} background"


def all_triples() -> list[tuple[str, str, str]]:
    return [(f, s, b) for f in COLOURS for s in SHAPES for b in COLOURS if f != b]


def held_out_triples(seed: int) -> list[tuple[str, str, str]]:
    return sorted(random.Random(seed).sample(all_triples(), N_HELD_OUT))


def build_dataset(seed: int, per_triple: int, held_out: set[tuple[str, str, str]]):
    rng = random.Random(seed)
    triples = [t for t in all_triples() if t not in held_out]
    images, captions = [], []
    for t in triples:
        for _ in range(per_triple):
            images.append(render(*t, rng))
            captions.append(caption(*t))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, 3, H, W]
    return x, captions


# ---------------------------------------------------------------- tokenizer and text encoder


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_TOKENS,
    )
    fast.save_pretrained(out)
    return PreTrainedTokenizerFast.from_pretrained(out)


def build_text_encoder(vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    )


# ---------------------------------------------------------------- models


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        latent_channels=4,
        # Few, wide groups: a group of one channel would normalise away its mean, and for flat
        # shapes a channel's mean is the colour.
        norm_num_groups=2,
        sample_size=SIZE,
        mid_block_add_attention=False,
    )


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=SIZE // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        # Cross-attention at 8x8 and 4x4 only: colours and layout are decided there, and the 16x16
        # level stays cheap.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def noise_scheduler_config() -> dict:
    # A cosine schedule destroys a 16x16 latent fully by the last step (the default SD schedule
    # leaves low-resolution images recognisable); v-prediction keeps early steps well conditioned.
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
    }


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------- training stages


def train_vae(x: torch.Tensor, steps: int, batch: int, seed: int, log) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 1e-3, 50)
        idx = torch.randint(0, len(x), (batch,), generator=g)
        # The autoencoder is all convolutions (no attention), so it learns as well from 32x32 crops
        # at a quarter of the cost, and is then used on whole images.
        top, left = torch.randint(0, SIZE - VAE_CROP + 1, (2,), generator=g).tolist()
        xb = x[idx, :, top : top + VAE_CROP, left : left + VAE_CROP]
        # Trained as a plain autoencoder on the posterior mean: sampling through an untrained
        # variance buries the signal in noise for hundreds of steps, and only the mean is used later.
        z = vae.encode(xb).latent_dist.mean
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, xb) + 0.5 * F.l1_loss(rec, xb) + 1e-6 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    return vae.eval()


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    means = [vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, len(x), 256)]
    return torch.cat(means)  # [N, 4, 16, 16]


def train_unet(
    means: torch.Tensor,
    captions: list[str],
    tokenizer: PreTrainedTokenizerFast,
    scaling: float,
    steps: int,
    batch: int,
    seed: int,
    log,
    checkpoint: Callable[[int, UNet2DConditionModel, CLIPTextModel], None],
    checkpoint_every: int,
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    torch.manual_seed(seed)
    unet = build_unet()
    text_encoder = build_text_encoder(len(tokenizer))
    scheduler = DDPMScheduler(**noise_scheduler_config())
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    # Captions are few; tokenise each distinct one once. Index 0 is the empty caption, used for
    # classifier-free guidance (dropped 10% of the time), as the pipeline encodes it at inference.
    distinct = ["", *sorted(set(captions))]
    ids = tokenizer(distinct, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids  # fmt: skip
    cap_index = torch.tensor([distinct.index(c) for c in captions])
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 1e-3, 100)
        idx = torch.randint(0, len(means), (batch,), generator=g)
        z0 = means[idx] * scaling
        drop = torch.rand(batch, generator=g) < 0.1
        tok = ids[torch.where(drop, 0, cap_index[idx])]
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=g)
        zt = scheduler.add_noise(z0, noise, t)
        target = scheduler.get_velocity(z0, noise, t)
        cond = text_encoder(tok)[0]
        pred = unet(zt, t, cond).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema_params, params, strict=True):
                e.lerp_(p, 1 - decay)
        if step % 50 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint(step + 1, ema_unet.eval(), ema_text.eval())
            ema_unet.train()
            ema_text.train()
    return ema_unet.eval(), ema_text.eval()


# ---------------------------------------------------------------- evaluation


def nearest_colour(pixels: np.ndarray) -> np.ndarray:
    palette = np.array(list(COLOURS.values()), dtype=np.float32)  # [C, 3]
    d = ((pixels[:, None, :].astype(np.float32) - palette[None]) ** 2).sum(-1)
    return d.argmin(1)


def dominant_colours(img: np.ndarray) -> tuple[str, str]:
    """(foreground, background) colour names of an [H, W, 3] image: the border's most common colour
    is the background; the centre's most common other colour is the foreground."""
    names = list(COLOURS)
    h, w, _ = img.shape
    labels = nearest_colour(img.reshape(-1, 3)).reshape(h, w)
    m = h // 10
    border = np.concatenate([labels[:m].ravel(), labels[-m:].ravel(), labels[:, :m].ravel(),
                             labels[:, -m:].ravel()])  # fmt: skip
    bg = np.bincount(border, minlength=len(names)).argmax()
    centre = labels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].ravel()
    counts = np.bincount(centre, minlength=len(names))
    counts[bg] = 0
    return names[counts.argmax()], names[bg]


def evaluate(pipe: StableDiffusionPipeline, triples, meta: dict, log) -> float:
    prompts = [caption(*t) for t in triples]
    out = pipe(
        prompts,
        num_inference_steps=meta["default_steps"],
        guidance_scale=meta["guidance_scale"],
        generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
        output_type="np",
    ).images
    ok = 0
    for (fg, shape, bg), img in zip(triples, out, strict=True):
        got = dominant_colours((img * 255).round().astype(np.uint8))
        ok += got == (fg, bg)
        log(f"  {caption(fg, shape, bg)!r}: got {got[0]} on {got[1]}")
    return ok / len(triples)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-triple", type=int, default=12, help="rendered variants of each triple")
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--unet-steps", type=int, default=1200)
    ap.add_argument("--unet-batch", type=int, default=32)
    # One thread: on a shared machine two spinning OpenMP threads stall each other for seconds, and
    # the arithmetic (hence the result) does not depend on a thread count the machine happens to have.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint-every", type=int, default=300, help="save and evaluate every N UNet steps")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {msg}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    held_out = held_out_triples(args.seed)
    x, captions = build_dataset(args.seed, args.per_triple, set(held_out))
    log(f"dataset: {len(x)} images, {len(set(captions))} captions, {len(held_out)} triples held out")

    vae = train_vae(x, args.vae_steps, args.vae_batch, args.seed + 1, log)
    means = encode_latents(vae, x)
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    log(f"latents {tuple(means.shape)}, scaling factor {scaling:.4f}")

    tokenizer = build_tokenizer(args.out / "tokenizer")
    meta = {
        "sizes": [f"{SIZE}x{SIZE}"],
        "default_steps": 20,
        "guidance_scale": 4.0,
        "training": {
            "seed": args.seed,
            "colours": {k: list(v) for k, v in COLOURS.items()},
            "shapes": SHAPES,
            "caption": "a {colour} {shape} on a {colour} background",
            "held_out": [list(t) for t in held_out],
        },
    }

    def save(step: int, unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> None:
        sched = DPMSolverMultistepScheduler(**noise_scheduler_config(), timestep_spacing="trailing")
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(args.out, safe_serialization=True)
        (args.out / "atenea_image.json").write_text(json.dumps(meta, indent=2) + "\n")
        with torch.no_grad():
            acc = evaluate(pipe, held_out, meta, log)
        log(f"step {step}: saved {args.out}; held-out colour accuracy {acc:.2%}")

    unet, text_encoder = train_unet(
        means, captions, tokenizer, scaling, args.unet_steps, args.unet_batch, args.seed + 2, log,
        save, args.checkpoint_every,
    )  # fmt: skip
    save(args.unet_steps, unet, text_encoder)
    log(f"done in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
