"""The Python heap of a long-running platform process, settled once it has started.

CPython's cycle collector walks every container object of a generation when it collects it,
and starts collections by how many container objects were made. A platform process loads a
lot that lives as long as it does (modules, the app, SQLAlchemy's mappers, 10,000 compiled
rules) and then makes tens of thousands of short-lived tuples and dicts a second for the
points it handles. Left to CPython's defaults, a full collection walked that whole heap every
few seconds: in `ecoplat bench alarms` the alarm process spent 17 % of its CPU in the
collector, and each of its full collections stopped it for ~140 ms, as long as the target for
the p99 from publish to alarm; in the platform process a young collection every 700
allocations stopped every thread for 2-10 ms, 250 times a second (725 ms of pauses in 12 s).

settle() runs once start-up is done, in the platform process (app lifespan) and in each child
(childproc.serve): what exists then goes to the permanent generation, which no collection
walks; young collections wait for YOUNG_COLLECTION_AFTER net allocations (a batch of points
in flight is freed by reference counting before that, and never looked at); and a full
collection comes after about as many allocations as with the defaults."""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

_paused = [0.0, 0.0, 0.0]  # seconds collecting, per generation
_collections = [0, 0, 0]
_started = [0.0]

YOUNG_COLLECTION_AFTER = 50_000  # net allocations of container objects (CPython: 700)
MIDDLE_COLLECTION_AFTER = 10  # young collections (CPython: 10)
FULL_COLLECTION_AFTER = 14  # middle collections: a full one every 7 M allocations, as before


def settle(what: str) -> None:
    """Collects once, moves every object alive now out of the collector's reach (gc.freeze) and
    sets the thresholds above. Frozen objects are still freed by reference counting; only a
    cycle among them that turns into garbage later stays (bounded by the start-up heap)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_AFTER, MIDDLE_COLLECTION_AFTER, FULL_COLLECTION_AFTER)
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)
    log.info("%s: %d start-up objects frozen out of the collector's walks in %.0f ms", what,
             gc.get_freeze_count(), (time.perf_counter() - started) * 1000)


def stats() -> dict[str, object]:
    """What the collector did since settle(): objects frozen, its thresholds, collections and the
    seconds they took per generation (young, middle, full). `ecoplat bench alarms` reports it per process."""
    return {"frozen": gc.get_freeze_count(), "thresholds": list(gc.get_threshold()),
            "collections": list(_collections),
            "seconds": [round(s, 4) for s in _paused]}


def _time_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        generation = info["generation"]
        _collections[generation] += 1
        _paused[generation] += time.perf_counter() - _started[0]
