"""Settings of a ``hubserver run`` whose channel layer is Redis (``DASF_TEST_REDIS_URL``): what several hub
processes sharing one database use to reach each other's DASF consumers."""

import os

from hubserver.settings import *  # noqa: F403

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ["DASF_TEST_REDIS_URL"]]},
    }
}
