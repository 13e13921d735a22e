"""The images behind `url` answers: kept in memory for an hour (as OpenAI's URLs live), bounded in
count and bytes, the oldest dropped first.

Names are random tokens the server makes up (`<token>.<ext>`); a client can only fetch what it was
given, never name a path of its own.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}\.(png|jpeg|webp)$")


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    media_type: str
    expires_at: float  # on the store's clock


class ImageStore:
    def __init__(
        self,
        ttl_s: float = 3600.0,
        max_images: int = 1000,
        max_bytes: int = 256 * 2**20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_images = max_images
        self.max_bytes = max_bytes
        self._clock = clock
        self._images: OrderedDict[str, StoredImage] = OrderedDict()  # oldest first
        self._bytes = 0

    def put(self, data: bytes, ext: str) -> str:
        """Stores one encoded image; returns its name."""
        self._expire()
        name = f"{secrets.token_urlsafe(16)}.{ext}"
        self._images[name] = StoredImage(data, MEDIA_TYPES[ext], self._clock() + self.ttl_s)
        self._bytes += len(data)
        while len(self._images) > self.max_images or (self._bytes > self.max_bytes and len(self._images) > 1):
            self._drop_oldest()
        return name

    def get(self, name: str) -> StoredImage | None:
        if not NAME_PATTERN.match(name):
            return None
        self._expire()
        return self._images.get(name)

    def seconds_left(self, image: StoredImage) -> int:
        return max(0, int(image.expires_at - self._clock()))

    def __len__(self) -> int:
        return len(self._images)

    def _expire(self) -> None:
        now = self._clock()
        while self._images and next(iter(self._images.values())).expires_at <= now:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, image = self._images.popitem(last=False)
        self._bytes -= len(image.data)
