"""The process between train.py's stdout/stderr file descriptors and the log file.

C++ libraries (XLA, TensorStore, gloo, jax's coordination service) write straight to file
descriptors 1 and 2. `console.boundary` points both at this relay's stdin; the relay appends
every line to `train.log` and passes only fatal lines (glog `F` lines, "Fatal Python error",
"Check failed") on to the terminal, so an abort inside a library is never silent. It is a
separate process because an abort kills every thread of the process that aborts; the relay
reads to the end of the pipe and exits when train.py (and all its children) have exited.

    python -m dalle2_jax.train.relay <log file>     # stdin: the pipe, stdout: the terminal
"""

from __future__ import annotations

import re
import signal
import sys

FATAL = re.compile(rb"^(F\d{4} [\d:.]+\s+\d+ \S+\] |Fatal Python error: |.*Check failed: )")
# jax's coordination service ends a process whose peer or coordinator died with a fatal line.
LOST_COORDINATOR = b"Failed to send RPC to coordination service"
LOST_PEER = b"detected fatal errors"


def explain(line: bytes, log: str) -> str:
    """The terminal's text for a fatal line."""
    text = FATAL.sub(b"", line).decode("utf-8", "replace").strip()
    if LOST_COORDINATOR in line:
        return (
            "Lost the coordinator of this multi-process run (process 0): jax's coordination "
            "service cannot be reached, so this process was ended. Rerun all processes to "
            f"resume from the last checkpoint. (Full detail in {log}.)"
        )
    if LOST_PEER in line:
        return (
            "Another process of this multi-process run died; jax's coordination service ended "
            f"this one. Rerun all processes to resume from the last checkpoint. ({log})"
        )
    clipped = text if len(text) <= 300 else text[:300] + " ..."
    return f"Fatal error in a library: {clipped} (full detail in {log})"


def main(log: str) -> None:
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # drain the pipe until train.py is gone
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    told = False
    with open(log, "ab", buffering=0) as out:
        for line in sys.stdin.buffer:
            out.write(line)
            if not told and FATAL.match(line):
                told = True  # the first fatal line says why; the rest is in the log
                sys.stdout.write(explain(line, log) + "\n")
                sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
