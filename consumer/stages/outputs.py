"""Typed outcomes of one input event: what the enricher hands back to the stream runtime.

The runtime never looks inside a payload: it only needs to know which topic an output goes to, its key,
value and headers, and whether there is anything to produce at all. Strings such as ``"tombstone"`` used
to carry that meaning through five call sites; a closed set of types lets the type checker and a
``match`` statement do it instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Headers = list[tuple[str, bytes]]

#: the last three only in ``enrich replay`` (consumer/replay/): an input at or past the replay's end offsets,
#: an input that is not the newest of its product, a product updated live while the replay ran
SkipReason = Literal["superseded", "stale_update", "replay_past_end", "replay_not_latest", "replay_newer_live"]


@dataclass(frozen=True, slots=True)
class Enriched:
    """An attributes-enriched.v1 event for the output topic, keyed by product id."""

    key: str
    value: bytes
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A product delete: ``key=product_id, value=None`` on the output topic (compaction drops the product).

    A tombstone has no body, so its lineage (source coordinates, ``updated_at``, event id) rides in headers.
    """

    key: str
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter.v1 record for the dead-letter topic, keyed by the (possibly clipped) original key."""

    key: bytes | None
    value: bytes
    reason: str
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Skipped:
    """Nothing to produce: the offset completes at once with this documented outcome.

    ``superseded``: a newer input of the same product was already in flight, so this one's output would
    only be overwritten. ``stale_update``: its ``updated_at`` is older than one already seen for the product.
    """

    reason: SkipReason


Output = Enriched | Tombstone | DeadLetter | Skipped
