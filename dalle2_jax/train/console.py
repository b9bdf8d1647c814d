"""What a training run shows on the terminal, and the full record it keeps in `train.log`.

`train.py` runs its work inside `boundary(workdir, verbose)`:

- everything goes to `<workdir>/train.log` (appended; `train.<i>.log` for process i > 0 of a
  multi-process run): every log record with its traceback, library logs (orbax, absl,
  grain), warnings, and whatever C++ libraries (XLA, TensorStore, gloo) print (through
  `relay`, which also shows their fatal lines: an abort inside a library is never silent);
- the terminal gets this package's progress lines, the first line of other libraries'
  warnings and errors, the progress bar, and at the end one paragraph for a fault;
- `verbose` (`--verbose` or `DALLE2_VERBOSE=1`) shows everything on the terminal as well;
- the process exits with the code of `faults` (0 done, 75 resumable, 3 needs you, 1 bug).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from dalle2_jax.train import relay as relay_module
from dalle2_jax.train.faults import (
    EXIT_DONE,
    EXIT_INTERRUPTED,
    EXIT_NEEDS_USER,
    EXIT_UNEXPECTED,
    TrainingFault,
)

log = logging.getLogger("dalle2_jax")
_trace = logging.getLogger("trace")  # tracebacks of faults: the log file only

VERBOSE_ENV = "DALLE2_VERBOSE"
_FILE_FORMAT = "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"
_PROCESS_ENV = ("JAX_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "TPU_WORKER_ID")


def log_path(workdir: str | Path, process_id: int | None = None) -> Path:
    """`train.log` of process 0 (or a single-process run), `train.<i>.log` of process i."""
    if process_id is None:
        process_id = next((int(os.environ[v]) for v in _PROCESS_ENV if v in os.environ), 0)
    return Path(workdir) / ("train.log" if not process_id else f"train.{process_id}.log")


def verbose_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


_FILE_ONLY = ("asyncio", "unraisable", "thread", "trace")  # the log file only


def _ours(record: logging.LogRecord) -> bool:
    return record.name == "dalle2_jax" or record.name.startswith("dalle2_jax.")


class _TerminalFilter(logging.Filter):
    """This package's records from INFO; other libraries' from WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ours(record):
            return record.levelno >= logging.INFO
        return record.levelno >= logging.WARNING and not record.name.startswith(_FILE_ONLY)


class _TerminalFormatter(logging.Formatter):
    """Time and message; other libraries' messages cut to their first line; no tracebacks
    (they are in the log file)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if not _ours(record):
            message = f"{record.name}: {_first_line(message)}"
        return f"{self.formatTime(record, '%H:%M:%S')} {message}"


def _first_line(text: str, limit: int = 200) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit] + " ..."


@contextlib.contextmanager
def boundary(workdir: str | Path, verbose: bool = False, process_id: int | None = None) -> Iterator:
    """Route output as the module docstring says, run the body, turn its end into an exit
    code (`SystemExit`). Faults print their paragraph; other errors their first line."""
    path = log_path(workdir, process_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's lifetime)
    except OSError as error:
        sys.stderr.write(f"Cannot write to the workdir: {_os_error(error)}. {_DISK_HINT}\n")
        raise SystemExit(EXIT_NEEDS_USER) from error
    terminal = sys.stderr
    if not verbose:
        sys.stdout.flush()
        sys.stderr.flush()
        terminal = os.fdopen(os.dup(2), "w", buffering=1)
        sys.stdout = os.fdopen(os.dup(1), "w", buffering=1)
        # What C++ libraries (XLA, TensorStore, gloo) print goes through the relay process to
        # the log, fatal lines also to the terminal; Python's own writes, meant for the user
        # (print, tqdm), still reach the terminal directly.
        relay = subprocess.Popen(
            [sys.executable, relay_module.__file__, str(path)],
            stdin=subprocess.PIPE,
            stdout=terminal,
            close_fds=True,
        )
        os.dup2(relay.stdin.fileno(), 1)
        os.dup2(relay.stdin.fileno(), 2)
        relay.stdin.close()
        sys.stderr = terminal
        sys.unraisablehook = _log_unraisable
        threading.excepthook = _log_thread_exception
    _route_logging(log_file, terminal, verbose)
    log.info("Full log: %s", path)
    code = EXIT_DONE
    try:
        yield
    except TrainingFault as fault:
        _trace.error("Fault, with its traceback:", exc_info=True)
        code = fault.exit_code
        _say(terminal, f"{fault}\n(exit code {code}; full detail in {path})")
    except KeyboardInterrupt:
        _trace.error("Interrupted:", exc_info=True)
        code = EXIT_INTERRUPTED
        _say(terminal, "Interrupted. Rerun the same command to resume from the last checkpoint.")
    except Exception as error:  # the boundary: disk errors, or a bug / unrecognised error
        if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
            _trace.error("Disk error:", exc_info=True)
            code = EXIT_NEEDS_USER
            _say(
                terminal,
                f"Could not write: {_os_error(error)}. {_DISK_HINT} Then rerun the same command "
                f"to resume from the last checkpoint.\n(exit code {code}; full detail in {path})",
            )
        else:
            _trace.error("Unexpected error:", exc_info=True)
            code = EXIT_UNEXPECTED
            _say(
                terminal,
                f"Stopped on an unexpected error: {type(error).__name__}: "
                f"{_first_line(str(error), 500)}\nThe traceback is in {path} (--verbose shows it "
                "here); please report it with that file.",
            )
    for handler in logging.getLogger().handlers:
        handler.flush()
    raise SystemExit(code)


# The file system refused a write: full, over quota or a size limit, read-only, no permission.
_DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EEXIST,
}
_DISK_HINT = "Free space, lift the file-size limit (ulimit -f) or choose a writable --workdir."


def _os_error(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or error}{where}"


def _say(terminal, text: str) -> None:
    _trace.warning("Told the user: %s", text)
    terminal.write(text + "\n")
    terminal.flush()


def _route_logging(log_file, terminal, verbose: bool) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):  # absl's stderr handler; ours replace it
        root.removeHandler(handler)
    root.setLevel(logging.INFO)
    to_file = logging.StreamHandler(log_file)
    to_file.setFormatter(logging.Formatter(_FILE_FORMAT))
    root.addHandler(to_file)
    to_terminal = logging.StreamHandler(terminal)
    if verbose:
        to_terminal.setFormatter(logging.Formatter(_FILE_FORMAT))
    else:
        to_terminal.addFilter(_TerminalFilter())
        to_terminal.setFormatter(_TerminalFormatter())
    root.addHandler(to_terminal)
    logging.captureWarnings(True)
    log.setLevel(logging.INFO)


def _log_unraisable(unraisable) -> None:
    """E.g. asyncio's "Event loop is closed" from a library's teardown: to the log only."""
    logging.getLogger("unraisable").warning(
        "Exception ignored in %r: %s",
        unraisable.object if unraisable.object is not None else unraisable.err_msg,
        unraisable.exc_value,
        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
    )


def _log_thread_exception(args) -> None:
    logging.getLogger("thread").warning(
        "Exception in thread %s",
        getattr(args.thread, "name", "?"),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
