"""Which bundle scores a stream: the first `[[routes]]` entry whose pattern matches wins."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence

from ae_monitor.config import RouteConfig

# The slot of a route without a bundle (a learning route): its streams are taken, not scored and not dead-lettered,
# until they are routed to a bundle of their own (`Router.pin`).
UNSCORED = "unscored:"


class Router:
    """Picks a bundle slot for a stream. A route matches the stream id, or with `field` set, that routing tag of the
    stream's record (a JSON field or header, say the machine type). A stream's bundle is decided by its first record
    and kept (a stream does not change machine type)."""

    def __init__(self, routes: Sequence[tuple[RouteConfig, str]]) -> None:
        self._routes = [(route.field, _matcher(route), slot) for route, slot in routes]
        self._cache: dict[str, str | None] = {}
        self._pinned: dict[str, str] = {}  # stream -> the slot of its own bundle (per-stream learning)

    def slot_for(self, stream: str, tags: Mapping[str, str] | None = None) -> str | None:
        if stream in self._pinned:
            return self._pinned[stream]
        if stream not in self._cache:
            self._cache[stream] = self._first_match(stream, tags or {})
        return self._cache[stream]

    def _first_match(self, stream: str, tags: Mapping[str, str]) -> str | None:
        for name, match, slot in self._routes:
            subject = stream if name == "stream" else tags.get(name)
            if subject is not None and match(subject):
                return slot
        return None

    def forget(self, stream: str) -> None:
        self._cache.pop(stream, None)

    def pin(self, stream: str, slot: str) -> None:
        """Route `stream` to `slot` whatever the routes say, until `unpin` (an evicted stream keeps its pin)."""
        self._pinned[stream] = slot

    def unpin(self, stream: str) -> str | None:
        return self._pinned.pop(stream, None)


def routing_fields(routes: Sequence[RouteConfig]) -> tuple[str, ...]:
    """The record fields the routes match on (besides the stream id): what the sources must keep as tags."""
    return tuple(sorted({route.field for route in routes if route.field != "stream"}))


def _matcher(route: RouteConfig) -> Callable[[str], bool]:
    if route.syntax == "regex":
        pattern = re.compile(route.match)
        return lambda stream: pattern.fullmatch(stream) is not None
    return lambda stream: fnmatch.fnmatchcase(stream, route.match)
