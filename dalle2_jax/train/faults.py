"""The faults a long run meets, as error types with an exit code each (docs/faults.md).

Every fault the trainer recognises raises a `TrainingFault` whose message is one paragraph
for the user: what happened, at which step, what is intact, the command or flag that
continues. `train.py` catches them at its boundary (`dalle2_jax.train.console`), prints the
paragraph and exits with the fault's code:

    0   EXIT_DONE         trained to num_steps (or already there)
    75  EXIT_RESUMABLE    stopped cleanly at a checkpoint (SIGTERM / preemption notice):
                          rerun the same command to resume
    3   EXIT_NEEDS_USER   a fault that needs you (corrupt checkpoint, disk full, NaN loss,
                          lost process, unreadable data): the paragraph says what to do
    1   EXIT_UNEXPECTED   anything else (a bug): its first line, the traceback in train.log
    130 EXIT_INTERRUPTED  Ctrl-C
"""

from __future__ import annotations

EXIT_DONE = 0
EXIT_UNEXPECTED = 1
EXIT_NEEDS_USER = 3
EXIT_RESUMABLE = 75  # EX_TEMPFAIL of sysexits.h: schedulers read it as "try again"
EXIT_INTERRUPTED = 130


class TrainingFault(RuntimeError):
    """A recognised fault; `str(error)` is the paragraph the user reads."""

    exit_code = EXIT_NEEDS_USER


class TrainingStopped(TrainingFault):
    """Stopped cleanly after saving a checkpoint (preemption); rerunning resumes."""

    exit_code = EXIT_RESUMABLE


class CheckpointRestoreError(TrainingFault):
    """A checkpoint exists (or was asked for) but could not be restored."""


class CheckpointSaveError(TrainingFault):
    """A checkpoint could not be written (disk full, file-size limit, unwritable directory)."""


class NonFiniteLossError(TrainingFault, FloatingPointError):
    """The loss or gradient norm became NaN/Inf more often than `config.max_bad_steps`."""


class PeerLostError(TrainingFault):
    """Another process of a multi-host run died or stopped answering."""
