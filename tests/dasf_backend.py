"""A DASF backend module for the tests, served with demessaging's own command line::

    python tests/dasf_backend.py --websocket-url ws://127.0.0.1:8000/ws --topic calc \
        --header '{"Authorization": "Token <key>"}' listen

``record`` appends its note to the file named by ``DASF_TEST_RECORD``: the tests read which requests
reached the backend."""

import os

from demessaging import main

__all__ = ["add", "fail", "record"]


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def fail(message: str) -> str:
    """Raise ValueError(message)."""
    raise ValueError(message)


def record(note: str) -> str:
    """Append ``note`` to the record file and return it."""
    with open(os.environ["DASF_TEST_RECORD"], "a") as handle:
        handle.write(note + "\n")
    return note


if __name__ == "__main__":
    main(messaging_config={"topic": "calc"})
