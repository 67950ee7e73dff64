"""Test settings: the binary's settings on a throw-away data directory, plus a test app with its own types."""

import os
import tempfile

_worker = os.environ.get("PYTEST_XDIST_WORKER")  # pytest -n: this process is one of several
if _worker and os.environ.get("HUBSERVER_TEST_DATA_DIR_OF") != _worker:
    # A worker inherits its controller's environment: it gets a data directory of its own (the processes
    # it starts inherit that one, or name theirs).
    os.environ["HUBSERVER_DATA_DIR"] = tempfile.mkdtemp(prefix=f"hubserver-test-{_worker}-")
    os.environ["HUBSERVER_TEST_DATA_DIR_OF"] = _worker
else:
    os.environ.setdefault("HUBSERVER_DATA_DIR", tempfile.mkdtemp(prefix="hubserver-test-"))
# The hubs the tests start leave their running-hub notes (hubserver.running) here, where the user's own
# commands on this machine do not see them.
os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="hubserver-test-runtime-")
os.environ.pop("HUBSERVER_DEVICES", None)

from hubserver.settings import *  # noqa: E402, F403  (after the environment above)
from hubserver.settings import DATABASES, INSTALLED_APPS  # noqa: E402

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
# Fast hashing for Django users in tests; device secrets use the hub's own argon2id profile.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DATABASES["default"]["TEST"] = {"NAME": os.path.join(os.environ["HUBSERVER_DATA_DIR"], "test.sqlite3")}
