"""The worker's collector settings (docs/design.md, "The worker's garbage collector")."""

from __future__ import annotations

import gc

from sluice.workers.worker import GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_what_exists_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000  # the modules and objects of the test process, frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
