"""Secret verification for the event loop: off the loop, bounded, and cached.

- Off the loop: argon2 (and Django's password hashers) run in a dedicated thread pool; argon2-cffi
  releases the GIL, so the pool really uses the cores while the loop keeps serving sockets.
- Bounded: a thread semaphore (one slot per hashing thread: the cores plus one for device secrets, see
  ``hashing_threads``) caps concurrent hashing for async and sync callers together, so a reconnect
  storm queues instead of thrashing memory (8 MiB per argon2 verify). Async callers also wait on a
  per-loop asyncio semaphore before submitting work. It admits a few verifications per hashing thread
  (``QUEUED_PER_THREAD``), not one: a thread that finishes a hash finds the next one already queued
  instead of idling until the busy event loop has handed the result back and submitted more (with one
  slot per thread, the threads sat idle most of a 1,000-device reconnect storm). A client that
  disconnects while queued costs no hashing either way: waiting on the semaphore it is simply cancelled,
  and a submitted job that has not started is withdrawn from the pool with it.
- Cached: a successful verification is remembered under a keyed blake2b fingerprint of
  (kind, stored hash, secret). A hit therefore needs the same secret *and* the same stored hash: a
  rotation anywhere (admin, API, another process) changes the hash and misses automatically, without
  any message between processes. Only successes are cached (a wrong guess never gets cheaper to
  retry), the cache is an LRU of bounded size, and ``invalidate(username)`` drops a username's entries
  at once (deactivation, rotation in this process).
"""

import asyncio
import hashlib
import os
import secrets
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from . import hashing

DEFAULT_MAX_ENTRIES = 20_000
# Verifications an event loop may have submitted to the pool per hashing thread (running or queued).
QUEUED_PER_THREAD = 16


def default_concurrency():
    """The CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def hashing_threads():
    """Threads (and concurrent argon2 verifications) for device secrets: one per core, plus one.

    argon2-cffi hashes without the GIL, but a thread needs it for a moment after each hash to hand the
    result back and take the next job, and while the event loop thread holds it, that core stops hashing.
    The extra thread hashes meanwhile. A 1,000-device cold reconnect storm on 2 cores took ~3.0 s with 3
    threads against ~3.5 s with 2, for 8 MiB more at the peak."""
    return default_concurrency() + 1


def _check_django_password(stored_hash, secret):
    # Without a setter: upgrading a user's hash would write to the database from the hashing thread.
    from django.contrib.auth.hashers import check_password

    return check_password(secret, stored_hash)


def _check_argon2(stored_hash, secret):
    return hashing.verify_secret(stored_hash, secret)


CHECKS = {"argon2": _check_argon2, "django": _check_django_password}


class Verifier:
    """Verifies secrets against stored hashes with a bounded thread pool and a cache of successes."""

    def __init__(self, concurrency=None, max_entries=DEFAULT_MAX_ENTRIES, kind="argon2", name="argon2"):
        if kind not in CHECKS:
            raise ValueError(f"unknown verification kind {kind!r}; known: {', '.join(CHECKS)}")
        self.kind = kind
        self.concurrency = concurrency or default_concurrency()
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)  # fingerprints are useless outside this process
        self._cache = OrderedDict()  # fingerprint -> username
        self._by_username = {}  # username -> {fingerprint, ...}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._loop_slots = weakref.WeakKeyDictionary()  # loop -> asyncio.Semaphore (one per loop)
        self._executor = None
        self._executor_lock = threading.Lock()
        self._name = name
        self.stats = {"hits": 0, "misses": 0, "checks": 0}

    # -- cache -----------------------------------------------------------------------------------------

    def fingerprint(self, stored_hash, secret):
        """Keyed blake2b of (kind, stored hash, secret), length-prefixed so no two inputs collide."""
        digest = hashlib.blake2b(key=self._key, digest_size=32)
        for part in (self.kind, stored_hash, secret):
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(4, "big"))
            digest.update(data)
        return digest.digest()

    def _hit(self, key):
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.stats["hits"] += 1
                return True
            self.stats["misses"] += 1
            return False

    def _remember(self, key, username):
        with self._lock:
            self._cache[key] = username
            self._cache.move_to_end(key)
            self._by_username.setdefault(username, set()).add(key)
            while len(self._cache) > self.max_entries:
                old_key, old_username = self._cache.popitem(last=False)
                keys = self._by_username.get(old_username)
                if keys is not None:
                    keys.discard(old_key)
                    if not keys:
                        del self._by_username[old_username]

    def invalidate(self, username):
        """Forget every cached success of ``username``; returns how many entries were dropped."""
        with self._lock:
            keys = self._by_username.pop(username, ())
            for key in keys:
                self._cache.pop(key, None)
            return len(keys)

    def clear(self):
        with self._lock:
            self._cache.clear()
            self._by_username.clear()

    def __len__(self):
        return len(self._cache)

    # -- verification ----------------------------------------------------------------------------------

    def _check(self, stored_hash, secret):
        """Run the real check under the global bound (in whichever thread calls it)."""
        with self._slots:
            with self._lock:
                self.stats["checks"] += 1
            return bool(CHECKS[self.kind](stored_hash, secret))

    def _pool(self):
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix=f"hubserver-{self._name}"
                )
            return self._executor

    def _loop_semaphore(self):
        loop = asyncio.get_running_loop()
        semaphore = self._loop_slots.get(loop)
        if semaphore is None:
            semaphore = self._loop_slots[loop] = asyncio.Semaphore(self.concurrency * QUEUED_PER_THREAD)
        return semaphore

    @staticmethod
    def _usable(stored_hash, secret):
        return isinstance(stored_hash, str) and bool(stored_hash) and isinstance(secret, str)

    async def verify(self, stored_hash, secret, username=None, cached_only=False):
        """True if ``secret`` matches ``stored_hash``; the hashing never runs on the event loop. With
        ``cached_only`` (a throttled attempt), only a remembered success counts: nothing is hashed."""
        if not self._usable(stored_hash, secret):
            return False
        key = self.fingerprint(stored_hash, secret)
        if self._hit(key):
            return True
        if cached_only:
            return False
        async with self._loop_semaphore():
            ok = await asyncio.get_running_loop().run_in_executor(self._pool(), self._check, stored_hash, secret)
        if ok:
            self._remember(key, username)
        return ok

    def verify_sync(self, stored_hash, secret, username=None, cached_only=False):
        """The same for synchronous callers (the HTTP auth view): hashes in the calling thread, same bound."""
        if not self._usable(stored_hash, secret):
            return False
        key = self.fingerprint(stored_hash, secret)
        if self._hit(key):
            return True
        if cached_only:
            return False
        ok = self._check(stored_hash, secret)
        if ok:
            self._remember(key, username)
        return ok

    async def run(self, func, *args):
        """Run ``func(*args)`` in the pool under the same bound (e.g. a decoy check for unknown users)."""
        async with self._loop_semaphore():
            return await asyncio.get_running_loop().run_in_executor(self._pool(), self._bounded, func, args)

    def run_sync(self, func, *args):
        """The same in the calling thread."""
        return self._bounded(func, args)

    def _bounded(self, func, args):
        with self._slots:
            return func(*args)

    def shutdown(self):
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None


# The process-wide verifiers. Device secrets (argon2, cheap) and Django user passwords (PBKDF2 by default,
# ~100x dearer) get separate pools, so a flood of bad service logins cannot starve device reconnects.
device_verifier = Verifier(concurrency=hashing_threads(), kind="argon2", name="argon2")
service_verifier = Verifier(concurrency=1, max_entries=1_000, kind="django", name="passwords")


def invalidate(username):
    """Drop ``username``'s cached verifications from both verifiers."""
    if not username:
        return 0
    return device_verifier.invalidate(username) + service_verifier.invalidate(username)
