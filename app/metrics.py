"""Prometheus metrics: one registry per app (no process-global state), fed by the request middleware,
the engine wrapper and, for the engine's own gauges, read from `EngineClient.stats()` at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from model_runtime import EngineClient

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_GAP_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
_IMAGE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class _EngineCollector(Collector):
    """The engine's state as it is at scrape time."""

    def __init__(self, engine: Callable[[], EngineClient | None], admitted: Callable[[], int]) -> None:
        self._engine = engine
        self._admitted = admitted

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "atenea_requests_in_progress",
            "Admitted POST requests not yet answered (HTTP queue depth, running ones included)",
            value=self._admitted(),
        )
        engine = self._engine()
        if engine is None or not engine.is_alive():
            return
        stats = engine.stats()
        yield GaugeMetricFamily(
            "atenea_num_requests_waiting", "Sequences in the engine's queue", value=stats.waiting
        )
        yield GaugeMetricFamily(
            "atenea_num_requests_running", "Sequences in the running batch", value=stats.running
        )
        yield GaugeMetricFamily("atenea_kv_blocks_total", "KV cache blocks", value=stats.kv_blocks_total)
        yield GaugeMetricFamily(
            "atenea_kv_blocks_used",
            "KV cache blocks held by sequences",
            value=stats.kv_blocks_total - stats.kv_blocks_free,
        )
        queried, hits = stats.prefix_cache_queried_tokens, stats.prefix_cache_hit_tokens
        yield GaugeMetricFamily(
            "atenea_prefix_cache_hit_rate",
            "Share of prompt tokens whose K/V came from the prefix cache, since start",
            value=hits / queried if queried else 0.0,
        )
        yield CounterMetricFamily(
            "atenea_prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache", queried
        )
        yield CounterMetricFamily("atenea_prefix_cache_hit_tokens", "Prompt tokens found there", hits)
        yield CounterMetricFamily("atenea_engine_steps", "Engine steps run", stats.steps)


# The route whose requests also feed the image metrics.
IMAGE_ROUTE = "/v1/images/generations"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "atenea_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "atenea_e2e_request_latency_seconds",
            "Arrival to last byte, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "atenea_time_to_first_token_seconds",
            "Arrival to the first generated token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "atenea_inter_token_latency_seconds",
            "Time between a sequence's consecutive outputs",
            buckets=_TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("atenea_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("atenea_generation_tokens", "Tokens generated", registry=r)
        self.rejections = Counter(
            "atenea_rejected_requests", "Requests refused before any work, by reason", ["reason"], registry=r
        )
        self.image_requests = Counter(
            "atenea_image_requests", "Image generation requests by status", ["status"], registry=r
        )
        self.image_latency = Histogram(
            "atenea_image_request_latency_seconds",
            "Image generation requests, arrival to answer",
            buckets=_IMAGE_BUCKETS,
            registry=r,
        )
        self.images_generated = Counter("atenea_images_generated", "Images produced", registry=r)

    def watch_engine(self, engine: Callable[[], EngineClient | None], admitted: Callable[[], int]) -> None:
        self.registry.register(_EngineCollector(engine, admitted))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_latency.labels(route).observe(seconds)
        if route == IMAGE_ROUTE and method == "POST":
            self.observe_image_request(status, seconds)

    def observe_image_request(self, status: int, seconds: float) -> None:
        """Called by the request middleware for every image generation request."""
        self.image_requests.labels(str(status)).inc()
        self.image_latency.observe(seconds)

    def count_images(self, images: int) -> None:
        """For the image service: images produced by one answered request."""
        self.images_generated.inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)
