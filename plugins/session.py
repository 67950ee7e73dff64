"""Where the hub keeps who a connected client is (on amqtt's per-session ``attributes`` dict), and the lean
per-session objects that keep an idle connection small (thousands of idle devices stay a few KB each).

Upstream (amqtt 0.12.1 ``Session``): every session builds a ``transitions.Machine`` (~16 KB and ~170 us per
CONNECT) for three states, and every session and broker handler holds ``asyncio.Queue`` objects (~3.2 KB
each: three deques and an Event) that an idle device never fills. ``HubSession`` keeps the state in a slotted
``SessionState`` with the same triggers, and ``LeanQueue`` holds nothing until something is queued.
"""

import asyncio
import collections
import time
from math import floor

from amqtt.session import Session
from transitions import MachineError

PRINCIPAL = "hubserver.principal"
BAD_CREDENTIALS = "hubserver.bad_credentials"  # set by the auth plugin when it refused the credentials
BAD_CLIENT_ID = "hubserver.bad_client_id"  # ... or the client id those credentials may not use


def principal_of(session):
    """The principal the auth plugin stored for this session, or None (never authenticated)."""
    return session.attributes.get(PRINCIPAL) if session is not None else None


def set_principal(session, principal):
    session.attributes[PRINCIPAL] = principal


class LeanQueue:
    """The part of ``asyncio.Queue`` amqtt uses (unbounded: put, put_nowait, get, get_nowait, empty, qsize),
    allocating its deque only while it holds items. ``notify`` (if set) is called after every put: the
    broker's client loop uses it instead of a task blocked in ``get()`` per queue."""

    __slots__ = ("_getters", "_items", "notify")

    def __init__(self):
        self._items = None
        self._getters = None
        self.notify = None

    def qsize(self):
        return len(self._items) if self._items else 0

    def empty(self):
        return not self._items

    def full(self):
        return False

    def put_nowait(self, item):
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        self._wake_getter()
        if self.notify is not None:
            self.notify()

    async def put(self, item):
        self.put_nowait(item)

    def get_nowait(self):
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    async def get(self):
        while not self._items:
            if self._getters is None:
                self._getters = []
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake_getter()  # as asyncio.Queue: a woken getter that is cancelled passes it on
                raise
        return self.get_nowait()

    def _wake_getter(self):
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


class SessionState:
    """What amqtt and the hub use of the session's ``transitions.Machine``: ``state``, the triggers
    ``connect()`` / ``disconnect()`` with the same allowed moves (``MachineError`` otherwise; connect from
    "connected" is how amqtt detects a take-over) and the same on-enter bookkeeping of connect/disconnect
    times, and ``is_new()`` / ``is_connected()`` / ``is_disconnected()``."""

    __slots__ = ("session", "state")

    def __init__(self, session, state="new"):
        self.session = session
        self.state = state

    def connect(self):
        if self.state == "connected":
            raise MachineError("Can't trigger event connect from state connected!")
        self.state = "connected"
        self.session.last_connect_time = floor(time.time())
        self.session.last_disconnect_time = None
        return True

    def disconnect(self):
        self.state = "disconnected"  # from every state, re-entering "disconnected" included
        self.session.last_disconnect_time = floor(time.time())
        return True

    def is_new(self):
        return self.state == "new"

    def is_connected(self):
        return self.state == "connected"

    def is_disconnected(self):
        return self.state == "disconnected"


class HubSession(Session):
    """amqtt's Session with a ``SessionState`` instead of a ``transitions.Machine`` and ``LeanQueue``s.

    ``v5`` is the session's MQTT 5 state (``plugins/mqtt5/session.py``), None for an MQTT 3.1.1 client."""

    v5 = None

    def __init__(self):
        super().__init__()
        self._lean_queues()

    def _init_states(self):
        self.transitions = SessionState(self)

    def _lean_queues(self):
        self.retained_messages = LeanQueue()
        self.delivered_message_queue = LeanQueue()

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lean_queues()
