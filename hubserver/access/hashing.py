"""Device secrets: generated with ``secrets``, stored only as argon2id hashes.

The profile is sized for machine-generated secrets, not for human passwords. A 256-bit random secret
cannot be guessed whatever the hash cost, so argon2's memory hardness only has to make a stolen hash
table useless for precomputation, not slow down a dictionary attack. argon2-cffi's defaults (t=3,
64 MiB, p=4: ~130 ms per verify here) would make 1,000 devices reconnecting at once take minutes on
two cores; this profile (t=1, 8 MiB, p=1) verifies in ~3 ms and uses 8 MiB per concurrent verify.

Hashes carry their own parameters, so changing the profile later keeps old hashes verifying;
``needs_rehash`` tells which ones to upgrade on the next rotation.
"""

import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TIME_COST = 1
MEMORY_COST_KIB = 8 * 1024
PARALLELISM = 1
HASH_LEN = 32
SALT_LEN = 16

# 32 random bytes (256 bits), URL-safe base64: 43 characters that survive MQTT, HTTP headers and CSV.
SECRET_BYTES = 32

hasher = PasswordHasher(
    time_cost=TIME_COST,
    memory_cost=MEMORY_COST_KIB,
    parallelism=PARALLELISM,
    hash_len=HASH_LEN,
    salt_len=SALT_LEN,
    type=Type.ID,
)


def generate_secret(nbytes=SECRET_BYTES):
    """A new random secret (``secrets.token_urlsafe``): at least 32 bytes of entropy."""
    return secrets.token_urlsafe(max(nbytes, SECRET_BYTES))


def hash_secret(secret):
    """The argon2id hash (PHC string, ``$argon2id$v=19$m=8192,t=1,p=1$...``) of ``secret``."""
    return hasher.hash(secret)


def verify_secret(stored_hash, secret):
    """True if ``secret`` matches ``stored_hash``. Never raises: a mismatch, an empty or malformed hash, or
    a non-argon2 value is simply False (a row with a broken hash must refuse, not crash the CONNECT)."""
    if not stored_hash or secret is None or not stored_hash.startswith("$argon2"):
        return False
    try:
        return hasher.verify(stored_hash, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    except Exception:  # argon2 raises plain ValueError/TypeError on some garbage (e.g. NUL bytes)
        return False


def needs_rehash(stored_hash):
    """True if ``stored_hash`` was made with other parameters than the current profile."""
    try:
        return hasher.check_needs_rehash(stored_hash)
    except Exception:
        return True


def is_hash(value):
    """True if ``value`` looks like an argon2 hash (used to refuse storing plaintext by mistake)."""
    return isinstance(value, str) and value.startswith("$argon2")
