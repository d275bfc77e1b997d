"""Work sized to the caller's deadline: measured synthesis cost per generator, chunk sizes, up-front refusals."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from services.common.errors import DeadlineError, TooLargeError
from services.editor.inference import caller_active, caller_remaining_s

# New measurements move the estimate by this much: steady enough that one slow call (a GC pause,
# a cold cache) does not halve the next chunk, quick enough to follow a change of load.
_EWMA = 0.3
# A reply is planned to fill at most this share of the channel's limit: image sizes vary by content
# (measured 1.0-1.7 MB per 1024 px PNG), so the estimate needs head-room.
_REPLY_SHARE = 0.6


@dataclass
class _Cost:
    seconds_per_image: float | None = None
    bytes_per_image: dict[str, float] = field(default_factory=dict)  # largest seen, per format


class RenderBudget:
    """What synthesis costs per image on each base generator, learned from the calls themselves (the
    health check's warm-up measures one image before the first request), and what that allows:

    - `chunk_size`: images per TorchServe call, so that one call takes about `chunk_seconds` and
      its reply stays well under the channel's limit;
    - `check_fits`: refuse up front, with the numbers, a request that cannot finish within the
      caller's deadline or whose reply would exceed the message limit;
    - `before_chunk`: stop sending chunks once the caller has gone or its deadline has passed.
    """

    def __init__(self, chunk_seconds: float, max_chunk: int, max_message_bytes: int):
        self.chunk_seconds = chunk_seconds
        self.max_chunk = max_chunk
        self.max_message_bytes = max_message_bytes
        self._costs: dict[str, _Cost] = {}
        self._lock = threading.Lock()

    def observe(self, key: str, images: int, seconds: float, encoded_bytes: list[int], fmt: str) -> None:
        if images <= 0:
            return
        with self._lock:
            cost = self._costs.setdefault(key, _Cost())
            per_image = seconds / images
            old = cost.seconds_per_image
            cost.seconds_per_image = per_image if old is None else (1 - _EWMA) * old + _EWMA * per_image
            if encoded_bytes:
                cost.bytes_per_image[fmt] = max(cost.bytes_per_image.get(fmt, 0.0), float(max(encoded_bytes)))

    def seconds_per_image(self, key: str) -> float | None:
        with self._lock:
            cost = self._costs.get(key)
            return None if cost is None else cost.seconds_per_image

    def bytes_per_image(self, key: str, fmt: str) -> float | None:
        with self._lock:
            cost = self._costs.get(key)
            return None if cost is None else cost.bytes_per_image.get(fmt)

    def chunk_size(self, key: str, fmt: str) -> int:
        n = self.max_chunk
        seconds = self.seconds_per_image(key)
        if seconds:
            n = min(n, max(1, int(self.chunk_seconds / seconds)))
        size = self.bytes_per_image(key, fmt)
        if size:
            n = min(n, max(1, int(_REPLY_SHARE * self.max_message_bytes / size)))
        return n

    def check_fits(self, key: str, images: int, fmt: str, field_name: str, one_reply: bool) -> None:
        """TooLargeError (RESOURCE_EXHAUSTED) naming `field_name` when `images` cannot be made within the
        caller's remaining time, or (`one_reply`) would not fit in one reply message."""
        size = self.bytes_per_image(key, fmt)
        if one_reply and size and images * size > _REPLY_SHARE * self.max_message_bytes:
            fit = max(1, int(_REPLY_SHARE * self.max_message_bytes / size))
            raise TooLargeError(field_name, f"{images} {fmt.upper()} images of ~{size / 1e6:.1f} MB each exceed the "
                                            f"reply limit of {self.max_message_bytes / 1e6:.0f} MB; ask for at most "
                                            f"{fit}, or use JPEG")
        seconds = self.seconds_per_image(key)
        remaining = caller_remaining_s()
        if seconds and remaining is not None and images * seconds > remaining:
            fit = int(remaining / seconds)
            raise TooLargeError(field_name, f"{images} images need ~{images * seconds:.1f} s here ({seconds:.2f} s "
                                            f"each), but the deadline leaves {max(remaining, 0):.1f} s; ask for at "
                                            f"most {fit} or set a longer deadline")

    @staticmethod
    def before_chunk(done: int, total: int) -> None:
        """Raise instead of sending another chunk to a caller that is gone or out of time."""
        if not caller_active():
            raise DeadlineError(f"the caller cancelled after {done} of {total} images")
        remaining = caller_remaining_s()
        if remaining is not None and remaining <= 0:
            raise DeadlineError(f"the deadline passed after {done} of {total} images")
