"""Start-up time of the command lines and the web page."""

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector over a block of heavy imports, then leave it as it was.

    Importing torch (and, for training, torchvision and basicsr) creates hundreds of thousands of long-lived objects,
    none of them garbage, and the collector runs hundreds of full passes over them meanwhile: about 1 s of a 3-4 s
    start on 2 cores. Nested pauses are harmless."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
