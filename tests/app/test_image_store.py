"""The store behind `url` answers: names the server makes up, expiry after the TTL, bounds."""

from __future__ import annotations

from app.image_store import NAME_PATTERN, ImageStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_put_then_get() -> None:
    store = ImageStore()
    name = store.put(b"png bytes", "png")
    assert NAME_PATTERN.match(name) and name.endswith(".png")
    image = store.get(name)
    assert image is not None and image.data == b"png bytes" and image.media_type == "image/png"
    assert store.put(b"png bytes", "png") != name  # every image gets a fresh name


def test_images_expire_after_the_ttl() -> None:
    clock = Clock()
    store = ImageStore(ttl_s=3600, clock=clock)
    name = store.put(b"x", "jpeg")
    clock.now = 3599
    image = store.get(name)
    assert image is not None and store.seconds_left(image) == 1
    clock.now = 3600
    assert store.get(name) is None and len(store) == 0


def test_the_oldest_images_go_first_when_full() -> None:
    store = ImageStore(max_images=2)
    names = [store.put(bytes([i]), "png") for i in range(3)]
    assert store.get(names[0]) is None
    assert store.get(names[1]) is not None and store.get(names[2]) is not None


def test_byte_bound() -> None:
    store = ImageStore(max_bytes=10)
    first = store.put(b"123456", "png")
    second = store.put(b"123456", "png")
    assert store.get(first) is None and store.get(second) is not None


def test_names_outside_the_pattern_are_never_looked_up() -> None:
    store = ImageStore()
    for name in ["", "../etc/passwd", "a.png", "/abs/path.png", "x" * 22 + ".gif", "x" * 22 + ".png/.."]:
        assert store.get(name) is None
