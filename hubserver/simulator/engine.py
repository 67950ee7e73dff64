"""``Simulator``: provisions the simulated devices of one type and runs them against a broker.

The devices are ``PREFIX`` + a zero-padded number (``sim-0001``), created or re-provisioned in the hub's
database with ``provision_many`` (the simulator runs on the hub's data directory). Their new secrets live
only in this process's memory; provisioning again rotates them, so a second simulator with the same prefix
takes the devices over and the first one's sessions are dropped.
"""

import asyncio
import contextlib
import random

from channels.db import database_sync_to_async

from ..access.provisioning import connection_info, provision_many
from ..exceptions import ValidationError
from .device import SimulatedDevice
from .target import resolve_target


def simulated_device_ids(prefix, count, start=1):
    """``[prefix0001, prefix0002, ...]``: the numbering of ``hubserver provision --count``."""
    width = max(4, len(str(start + count - 1)))
    return [f"{prefix}{number:0{width}d}" for number in range(start, start + count)]


class Simulator:
    """``count`` devices of ``device_type`` publishing every ``interval`` seconds to ``target``."""

    def __init__(
        self,
        device_type,
        *,
        count=1,
        interval=5.0,
        realistic=False,
        prefix="sim-",
        target=None,
        seed=None,
        keepalive=30,
    ):
        if device_type._device_model is None:
            raise ValidationError(f"device type {device_type.type_name()!r} has no models")
        if count < 1:
            raise ValidationError("count must be at least 1")
        if interval <= 0:
            raise ValidationError("interval must be a positive number of seconds")
        self.device_type = device_type
        self.count = count
        self.interval = interval
        self.realistic = realistic
        self.prefix = prefix
        self.target = target or resolve_target()
        self.keepalive = keepalive
        self.rng = random.Random(seed)
        self.connections = None
        self.inactive = []
        self.devices = []
        self._stop = asyncio.Event()
        self._loop = None

    @property
    def device_ids(self):
        return simulated_device_ids(self.prefix, self.count)

    def provision(self):
        """Create or rotate the devices (ORM, synchronous); returns their connection infos."""
        verbose = str(self.device_type._meta.verbose_name)
        first = verbose.split(" ", 1)[0]
        verbose = verbose if first.isupper() else verbose[:1].lower() + verbose[1:]  # "GPS tracker" stays
        # Short and unique (admin lists and filters show names alone): "Simulated smart plug 7".
        names = {device_id: f"Simulated {verbose} {n}" for n, device_id in enumerate(self.device_ids, start=1)}
        results = provision_many(self.device_type, self.device_ids, names=names)
        self.inactive = [result.device.device_id for result in results if not result.device.is_active]
        self.connections = [connection_info(result.device, result.credentials) for result in results]
        return self.connections

    async def run(self, duration=0):
        """Run until ``duration`` seconds have passed (0: until ``stop()``), then disconnect every device."""
        self._loop = asyncio.get_running_loop()
        if self.connections is None:
            await database_sync_to_async(self.provision)()
        self.devices = [
            SimulatedDevice(
                self.device_type,
                info,
                self.target,
                interval=self.interval,
                realistic=self.realistic,
                rng=random.Random(self.rng.random()),
                keepalive=self.keepalive,
            )
            for info in self.connections
        ]
        tasks = [asyncio.create_task(device.run(self._stop)) for device in self.devices]
        try:
            if duration:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), duration)
            else:
                await self._stop.wait()
        finally:
            self._stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(device.close() for device in self.devices), return_exceptions=True)

    def stop(self):
        """Stop the run (safe from a signal handler or another thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop.set)
        else:
            self._stop.set()

    @property
    def stopping(self):
        return self._stop.is_set()

    def snapshot(self):
        return [device.snapshot() for device in self.devices]

    def totals(self):
        rows = self.snapshot()
        return {
            "devices": len(rows),
            "connected": sum(1 for row in rows if row["connected"]),
            "sent": sum(row["sent"] for row in rows),
            "acked": sum(row["acked"] for row in rows),
            "commands": sum(row["commands"] for row in rows),
        }

    @property
    def ever_connected(self):
        return any(device.ever_connected for device in self.devices)
