"""`atenea bench images` on a tiny random pipeline: it times both sides and the batched side batches."""

from __future__ import annotations

from pathlib import Path

from app.bench.images import bench
from app.cli import build_parser
from tests.model_runtime.images.tiny_pipeline import build_tiny_pipeline


async def test_bench_images_times_both_sides(tmp_path: Path) -> None:
    folder = build_tiny_pipeline(tmp_path / "tiny-sd")
    args = build_parser().parse_args(
        ["bench", "images", "--image-model", str(folder), "-c", "3", "--rounds", "1", "--steps", "1"]
    )
    result = await bench(args)
    assert result["model"] == "tiny-sd" and result["concurrency"] == 3
    assert result["one_at_a_time_images_per_s"] > 0 and result["batched_images_per_s"] > 0
    assert result["ratio"] == result["batched_images_per_s"] / result["one_at_a_time_images_per_s"]
    # Warm-up (one call), three calls one at a time, then one call for the three sent together.
    assert result["pipeline_calls"] == 1 + 3 + 1
