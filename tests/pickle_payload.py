"""An object whose unpickling writes a marker file: planted in files gan_dist must never unpickle."""

from __future__ import annotations

from pathlib import Path


def _touch(path: str) -> None:
    Path(path).write_text("code ran")


class PicklePayload:
    """Unpickling it writes `marker`: it must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return _touch, (self.marker,)
