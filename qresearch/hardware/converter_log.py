"""What TF's converter writes to the process's stderr (file descriptor 2, from C++: the MLIR diagnostics, a
location dump of kilobytes per error), held back while it runs. ``convert`` replays it unless it raises its own
error for a layer the runtime refuses, which names the layer and the fix; the dump then goes to a file the error
names, not in front of it."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path


class HeldOutput:
    text: str = ""

    def replay(self) -> None:
        if self.text:
            sys.stderr.write(self.text)
            sys.stderr.flush()

    def save(self) -> str:
        """Write the held text to a file in the temporary folder; returns its path."""
        with tempfile.NamedTemporaryFile("w", prefix="qresearch-converter-", suffix=".log", delete=False) as f:
            f.write(self.text)
        return str(Path(f.name))


@contextlib.contextmanager
def held_stderr():
    """Redirect file descriptor 2 to a temporary file for the block; the text is in ``.text`` afterwards. Where
    descriptor 2 cannot be duplicated (no such descriptor), nothing is held."""
    held = HeldOutput()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield held
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            held.text = sink.read().decode("utf-8", errors="replace")
