"""Signal handlers installed for the duration of a command or a run."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def handling(signum: int, handler: Callable) -> Iterator[bool]:
    """Install ``handler`` for ``signum`` while the block runs and restore the previous handler
    after it. Python lets only the main thread set handlers: elsewhere nothing is installed. Yields
    whether the handler was installed."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = signal.signal(signum, handler)
    try:
        yield True
    finally:
        signal.signal(signum, previous)
