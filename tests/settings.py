"""Test settings: the binary's settings on a throw-away data directory, plus a test app with its own types."""

import os
import tempfile

os.environ.setdefault("HUBSERVER_DATA_DIR", tempfile.mkdtemp(prefix="hubserver-test-"))
# The hubs the tests start leave their running-hub notes (hubserver.running) here, where the user's own
# commands on this machine do not see them.
os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="hubserver-test-runtime-")
os.environ.pop("HUBSERVER_DEVICES", None)

from hubserver.settings import *  # noqa: F403
from hubserver.settings import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
# Fast hashing for Django users in tests; device secrets use the hub's own argon2id profile.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DATABASES["default"]["TEST"] = {"NAME": os.path.join(os.environ["HUBSERVER_DATA_DIR"], "test.sqlite3")}
