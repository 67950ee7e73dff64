"""Failure-based throttling of authentication attempts, per username and per source address.

A username that failed ``AUTH_FAILURE_LIMIT`` times, or an address that failed ``AUTH_ADDRESS_FAILURE_LIMIT``
times, within ``AUTH_FAILURE_WINDOW`` seconds (counted from its first failure) is *throttled* until that
window ends: its attempts are refused without checking the secret, so a guesser gets a fixed number of
tries per window and costs no hashing. One exception keeps a guesser from locking out a device that is
already known: a device secret the verifier has already accepted (its success cache, keyed by the stored
hash, so a rotation still counts) is let in even while throttled. Service users and API tokens get no
such exception and do no database work at all while throttled.

Only secrets that were actually checked count as failures: a throttled refusal does not extend or
deepen a block (a broken device retrying behind a NAT would otherwise throttle every device there), and
a refused anonymous CONNECT is not a failure at all (it costs nothing to refuse). The ``token`` username,
shared by every API-token client, is limited per address only. IPv6 addresses count per /64, the block
one host is usually given.

Cheap and bounded: an attempt costs two dictionary lookups under a lock; only failures write. Each table
keeps at most ``MAX_KEYS`` keys, the least recently failed dropped first, so a spray of random usernames
cannot grow memory (and such a spray is caught per address).
"""

import ipaddress
import logging
import threading
import time
from collections import Counter, OrderedDict

from ..conf import hub_settings

logger = logging.getLogger("hubserver.access.throttle")

MAX_KEYS = 10_000  # per table
LOGGED_NAME = 64  # characters of a username or address shown in a log line

USERNAME = "username"
ADDRESS = "address"


def address_key(address):
    """The key an address counts under: IPv4 as given, IPv6 as its /64 (IPv4-mapped IPv6 as the IPv4)."""
    if not address:
        return None
    address = str(address)
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0].strip("[]"))
    except ValueError:
        return address[:LOGGED_NAME]
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


class FailureTable:
    """Failures per key in a window that starts with the key's first failure; a bounded LRU."""

    def __init__(self, limit, window, max_keys=MAX_KEYS):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._entries = OrderedDict()  # key -> [window start (monotonic), failures]

    def blocked(self, key, now):
        if not self.limit or key is None:
            return False
        entry = self._entries.get(key)
        return entry is not None and entry[1] >= self.limit and now - entry[0] < self.window

    def fail(self, key, now):
        """Count a failure; True when it is the one that reaches the limit."""
        if not self.limit or key is None:
            return False
        entry = self._entries.get(key)
        if entry is None or now - entry[0] >= self.window:
            entry = self._entries[key] = [now, 0]
        self._entries.move_to_end(key)
        entry[1] += 1
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
        return entry[1] == self.limit

    def __len__(self):
        return len(self._entries)


class AuthThrottle:
    """The username and address tables, and counters of what they refused (read by /metrics)."""

    def __init__(self, limit, address_limit, window, max_keys=MAX_KEYS, clock=time.monotonic):
        self.settings = (limit, address_limit, window)
        self.usernames = FailureTable(limit, window, max_keys)
        self.addresses = FailureTable(address_limit, window, max_keys)
        self.refused = Counter()  # (source, reason) -> attempts refused unchecked
        self.failures = Counter()  # source -> failures counted
        self._clock = clock
        self._lock = threading.Lock()

    @staticmethod
    def _username_key(username):
        return username if username and username != "token" else None

    def throttled(self, username, address):
        """``"username"`` or ``"address"`` if an attempt of ``username`` from ``address`` must be refused
        unchecked, else None."""
        now = self._clock()
        with self._lock:
            if self.usernames.blocked(self._username_key(username), now):
                return USERNAME
            if self.addresses.blocked(address_key(address), now):
                return ADDRESS
        return None

    def refuse(self, source, reason):
        with self._lock:
            self.refused[(source, reason)] += 1

    def failed(self, username, address, source):
        """Count a checked attempt that failed; logs once when a username or an address becomes throttled."""
        now = self._clock()
        user_key, addr_key = self._username_key(username), address_key(address)
        with self._lock:
            self.failures[source] += 1
            user_blocked = self.usernames.fail(user_key, now)
            addr_blocked = self.addresses.fail(addr_key, now)
        window = self.usernames.window
        if user_blocked:
            logger.warning(
                "throttling authentication of %r: %d failures within %gs (from %s)",
                user_key[:LOGGED_NAME],
                self.usernames.limit,
                window,
                (addr_key or "?")[:LOGGED_NAME],
            )
        if addr_blocked:
            logger.warning(
                "throttling authentication from %s: %d failures within %gs",
                addr_key[:LOGGED_NAME],
                self.addresses.limit,
                window,
            )

    def snapshot(self):
        with self._lock:
            return {
                "refused": dict(self.refused),
                "failures": dict(self.failures),
                "keys": {USERNAME: len(self.usernames), ADDRESS: len(self.addresses)},
            }


_current = None
_current_lock = threading.Lock()


def auth_throttle():
    """The process's throttle, rebuilt (empty) when its settings change."""
    global _current
    wanted = (
        hub_settings.AUTH_FAILURE_LIMIT,
        hub_settings.AUTH_ADDRESS_FAILURE_LIMIT,
        hub_settings.AUTH_FAILURE_WINDOW,
    )
    current = _current
    if current is not None and current.settings == wanted:
        return current
    with _current_lock:
        if _current is None or _current.settings != wanted:
            _current = AuthThrottle(*wanted)
        return _current


def reset():
    """Forget every failure (tests; an operator's shell after a false alarm)."""
    global _current
    with _current_lock:
        _current = None


def snapshot():
    """What /metrics reads: the current throttle's counters (zeros before the first attempt)."""
    current = _current
    if current is None:
        return {"refused": {}, "failures": {}, "keys": {USERNAME: 0, ADDRESS: 0}}
    return current.snapshot()
