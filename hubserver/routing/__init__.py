"""Broker-agnostic routing: device messages (their parsed parts) in, rows committed in batches, signals out.

``MessageRouter`` is the one entry point every broker engine calls; see ``router.py``.
"""

from .results import BatchCommitError, Refusal, RouteResult, RouterNotRunning
from .router import MessageRouter
from .writer import GroupCommitWriter

__all__ = [
    "BatchCommitError",
    "GroupCommitWriter",
    "MessageRouter",
    "Refusal",
    "RouteResult",
    "RouterNotRunning",
]
