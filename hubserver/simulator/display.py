"""The simulator's status display: a live rich table on a terminal, plain periodic lines otherwise.

The table has one row per device (device, connected, sent, acked, commands answered, last values), cut to
the terminal's height with the totals in its caption. Off a terminal (a pipe, a log file, CI) a line with
the totals is printed every few seconds, and one line per device at the end.
"""

import asyncio
import contextlib
import time

LIVE_REFRESH = 0.5
PLAIN_EVERY = 5.0
MAX_VALUES_WIDTH = 80


def format_values(values, limit=MAX_VALUES_WIDTH):
    text = " ".join(f"{name}={_short(value)}" for name, value in values.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(value):
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def totals_line(simulator):
    totals = simulator.totals()
    return (
        f"{totals['connected']}/{totals['devices']} connected, {totals['sent']} sent, {totals['acked']} acked, "
        f"{totals['commands']} commands answered"
    )


class Display:
    """Shows ``simulator`` on ``stream`` until ``stop()``; ``live=None`` picks the table on a terminal."""

    def __init__(self, simulator, stream, *, live=None, every=PLAIN_EVERY):
        self.simulator = simulator
        self.stream = stream
        self.live = stream.isatty() if live is None and hasattr(stream, "isatty") else bool(live)
        self.every = every
        self._stop = asyncio.Event()

    def stop(self):
        self._stop.set()

    async def run(self):
        if self.live:
            await self._run_live()
        else:
            await self._run_plain()

    async def _sleep(self, seconds):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- terminal -----------------------------------------------------------------------------------------

    async def _run_live(self):
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream)
        with Live(self.table(console.height), console=console, auto_refresh=False, transient=False) as live:
            while not self._stop.is_set():
                live.update(self.table(console.height), refresh=True)
                await self._sleep(LIVE_REFRESH)
            live.update(self.table(console.height), refresh=True)

    def table(self, height=40):
        from rich import box
        from rich.table import Table

        sim = self.simulator
        table = Table(
            box=box.SIMPLE_HEAD,
            title=f"{sim.device_type.type_name()} x{sim.count} -> {sim.target}, every {sim.interval:g}s"
            + (" (realistic)" if sim.realistic else ""),
            caption=totals_line(sim),
            expand=True,
        )
        rows = sim.snapshot()
        table.add_column("device", no_wrap=True, min_width=max((len(r["device_id"]) for r in rows), default=6))
        table.add_column("connected", no_wrap=True, max_width=28, overflow="ellipsis")
        for column in ("sent", "acked", "commands"):
            table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
        table.add_column("last values", overflow="ellipsis", no_wrap=True, ratio=1)
        room = max(3, height - 9)
        for row in rows[:room]:
            if row["connected"]:
                connected = "[green]yes[/green]"
            elif row["stopped"]:
                connected = "stopped"
            else:
                connected = f"[red]no[/red] {row['error']}".rstrip() if row["error"] else "[yellow]connecting[/yellow]"
            table.add_row(
                row["device_id"],
                connected,
                str(row["sent"]),
                str(row["acked"]),
                str(row["commands"]),
                format_values(row["last_values"]),
            )
        if len(rows) > room:
            table.add_row(f"... {len(rows) - room} more", "", "", "", "", "")
        return table

    # -- pipes and logs -----------------------------------------------------------------------------------

    async def _run_plain(self):
        sim = self.simulator
        self._write(
            f"simulating {sim.count} {sim.device_type.type_name()} device(s) ({sim.prefix}...) -> {sim.target}, "
            f"every {sim.interval:g}s{' (realistic)' if sim.realistic else ''}"
        )
        next_line = time.monotonic() + self.every
        while not self._stop.is_set():
            await self._sleep(max(0.0, next_line - time.monotonic()))
            if self._stop.is_set():
                break
            self._write(f"{time.strftime('%H:%M:%S')} {totals_line(sim)}")
            next_line += self.every

    def summary(self):
        """The closing lines: one per device, then the totals."""
        lines = []
        for row in self.simulator.snapshot():
            state = "ran" if row["ever_connected"] and not row["error"] else (row["error"] or "never connected")
            lines.append(
                f"{row['device_id']}: {state}; sent {row['sent']}, acked {row['acked']}, "
                f"commands {row['commands']}; {format_values(row['last_values'])}".rstrip("; ")
            )
        lines.append(f"total: {totals_line(self.simulator)}")
        return lines

    def _write(self, line):
        self.stream.write(line + "\n")
        self.stream.flush()
