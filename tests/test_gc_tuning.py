"""The serving process's garbage-collector settings (hubserver/management/gc_tuning.py)."""

import gc
import weakref

import pytest

from hubserver.management.gc_tuning import YOUNG_THRESHOLD, tune_for_serving


@pytest.fixture
def restore_gc():
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tuning_freezes_start_up_objects_and_raises_only_the_young_threshold(restore_gc):
    before = gc.get_threshold()
    tune_for_serving()
    assert gc.get_freeze_count() > 0  # start-up objects are out of every later collection
    assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])


def test_cycles_are_still_collected_after_tuning(restore_gc):
    tune_for_serving()

    class Node:
        pass

    node = Node()
    node.self = node
    ref = weakref.ref(node)
    del node
    assert ref() is not None  # a cycle: reference counting alone cannot free it
    gc.collect(0)
    assert ref() is None
