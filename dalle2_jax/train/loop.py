"""`train_and_evaluate(config, workdir)`: the one training loop every stage runs through.

Sections: (1) mesh, stage and optimizer; (2) state, born sharded or restored; (3) data from
the saved position; (4) the ahead-of-time compiled, donated train step; (5) the loop with
logging, evaluation, checkpoints, preemption and NaN checks.

Faults end in a `faults.TrainingFault` with one paragraph for the user (docs/faults.md); the
checkpoint manager, metrics writer and peer watchdog are closed on every path.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import optax
from tqdm.auto import tqdm

from dalle2_jax import stages
from dalle2_jax.data.loader import BatchLoader
from dalle2_jax.train import distributed
from dalle2_jax.train.checkpoint import Checkpointer
from dalle2_jax.train.faults import (
    CheckpointRestoreError,
    NonFiniteLossError,
    TrainingStopped,
)
from dalle2_jax.train.flops import model_flops, peak_flops_per_device
from dalle2_jax.train.mesh import (
    batch_sharding,
    data_parallel_size,
    global_batch,
    make_mesh,
    replicated,
)
from dalle2_jax.train.metrics import MetricsWriter
from dalle2_jax.train.optimizer import make_optimizer
from dalle2_jax.train.state import TrainState, create_train_state, num_params, state_shardings
from dalle2_jax.train.step import make_train_step

log = logging.getLogger(__name__)


__all__ = ["NonFiniteLossError", "setup", "stage_workdir", "train_and_evaluate"]


class _SigtermFlag:
    """Turns SIGTERM into a request to checkpoint and exit at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1:  # multi-host: jax's preemption sync manager handles it
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def stage_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """`workdir/<name>`: `config.name` if set (e.g. two upsamplers), else the stage's name."""
    return Path(workdir) / (config.get("name") or config.stage)


def _compile_step(train_step, state, shardings, batch_spec, mesh, rules, key, frozen, config):
    """AOT-compile the train step for the global batch (and the stage's frozen parameters,
    replicated, if any); returns (compiled, model FLOPs per step, counted as the benchmarks
    count them: `flops.model_flops`)."""
    B = config.batch_size
    batch_abstract = {
        name: jax.ShapeDtypeStruct(
            (B, *s.shape), s.dtype, sharding=batch_sharding(mesh, 1 + len(s.shape))
        )
        for name, s in batch_spec.items()
    }
    jitted = jax.jit(
        train_step,
        in_shardings=(
            shardings,
            {k: v.sharding for k, v in batch_abstract.items()},
            replicated(mesh),
            replicated(mesh),
        ),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = jitted.lower(state, batch_abstract, key, frozen).compile()
    return compiled, model_flops(train_step, state, batch_abstract, key, frozen)


def _save_config(config: ml_collections.ConfigDict, directory: Path) -> None:
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(config.to_json_best_effort(indent=2))


def setup(config: ml_collections.ConfigDict, workdir: str | Path | None = None):
    """(stage, mesh, rules, tx, schedule, init_params) for a config; allocates nothing.
    `workdir` is the stage's directory (`stage_workdir`)."""
    devices = jax.devices()[: config.mesh.get("num_devices") or None]
    mesh = make_mesh(config.mesh, devices)
    rules = tuple(tuple(r) for r in config.axis_rules)
    if config.batch_size % data_parallel_size(mesh):
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by the data-parallel mesh size "
            f"{data_parallel_size(mesh)} (mesh {dict(mesh.shape)})."
        )
    stage = stages.get_stage(config, workdir)
    tx, schedule = make_optimizer(config.optim, config.num_steps)

    def init_params(rng):
        with nn.logical_axis_rules(rules):
            return stage.init(rng)

    return stage, mesh, rules, tx, schedule, init_params


def _restore_step(config: ml_collections.ConfigDict, checkpointer: Checkpointer) -> int | None:
    """`config.checkpoint.restore_step`, unless an earlier run already resumed from it (its
    later steps are set aside): then the latest step, so rerunning the same command after a
    recovery never rolls back twice."""
    want = config.checkpoint.get("restore_step")
    latest = checkpointer.latest_step()
    if want is None:
        return None
    if latest is None:
        raise CheckpointRestoreError(
            f"checkpoint.restore_step={want}, but {checkpointer.directory} has no checkpoint."
        )
    if want < latest and checkpointer.set_aside_dir(want).exists():
        log.warning(
            "checkpoint.restore_step=%d was applied by an earlier run (the steps after it are in "
            "%s); resuming from the latest step %d. Drop the flag to silence this.",
            want,
            checkpointer.set_aside_dir(want),
            latest,
        )
        return None
    return want


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainState:
    """Train `config.stage` for `config.num_steps`, resuming from `workdir` if it has a
    checkpoint. Returns the final train state."""
    distributed.maybe_initialize(config)
    workdir = stage_workdir(config, workdir)
    _save_config(config, workdir)

    # 1. Mesh, stage, optimizer.
    stage, mesh, rules, tx, schedule, init_params = setup(config, workdir)

    with contextlib.ExitStack() as cleanup:  # closed on every path, faults included
        return _train(config, workdir, stage, mesh, rules, tx, schedule, init_params, cleanup)


def _train(
    config: ml_collections.ConfigDict,
    workdir: Path,
    stage: stages.Stage,
    mesh: jax.sharding.Mesh,
    rules: tuple,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    init_params: Callable,
    cleanup: contextlib.ExitStack,
) -> TrainState:
    """Sections 2-5 of `train_and_evaluate`; `cleanup` closes what they open."""
    key = jax.random.key(config.seed)
    init_key, step_key, eval_key = jax.random.split(key, 3)

    # 2. State: restored into the current mesh's shardings, or born sharded.
    ckpt_cfg = config.checkpoint
    checkpointer = Checkpointer(
        workdir / "checkpoints",
        max_to_keep=ckpt_cfg.keep,
        async_save=ckpt_cfg.get("async_save", True),
    )
    cleanup.callback(checkpointer.close)
    # From here on, a dead peer ends this process instead of leaving it in a collective.
    watchdog = distributed.PeerWatchdog.start_if_multiprocess(config, checkpointer)
    cleanup.callback(watchdog.stop)
    abstract, shardings = state_shardings(init_params, tx, mesh, rules)
    data_state, nonfinite_skipped = None, 0
    restore_step = _restore_step(config, checkpointer)
    if checkpointer.latest_step() is not None:
        state, _, data_state = checkpointer.restore(abstract, restore_step)
        if restore_step is not None:
            moved = checkpointer.set_aside_after(restore_step)
            if moved:
                log.warning(
                    "Resuming from step %d as asked (checkpoint.restore_step); later step(s) %s "
                    "moved to %s.",
                    restore_step,
                    ", ".join(map(str, moved)),
                    checkpointer.set_aside_dir(restore_step),
                )
        nonfinite_skipped = int(data_state.get("nonfinite_skipped", 0))
        log.info("Resumed %s from step %d.", config.stage, int(state.step))
    else:
        initial = stage.initial_params()  # e.g. config.init_from; None: random init
        state, shardings = create_train_state(init_params, tx, mesh, rules, init_key, initial)
        if initial is not None:
            log.info("%s starts from %s.", config.stage, config.get("init_from"))
        del initial
    start_step = int(state.step)
    if start_step >= config.num_steps:
        log.info("%s is already trained to step %d.", config.stage, start_step)
        return state
    log.info("%s: %.3fM parameters.", config.stage, num_params(state.params) / 1e6)

    # 3. Data: this process's share of each global batch, from the saved position.
    batch_spec = stage.batch_spec()
    loader_start = start_step
    if data_state is not None:
        loader_start = BatchLoader.start_step_from_state(
            data_state, global_batch_size=config.batch_size, seed=config.seed
        )
    train_source = stage.source("train")
    loader = BatchLoader(
        train_source,
        global_batch_size=config.batch_size,
        seed=config.seed,
        shuffle=config.data.get("shuffle", True),
        start_step=loader_start,
        keys=tuple(batch_spec),
        num_threads=config.data.get("num_threads", 4),
    )

    # 4. One compiled, donated train step (skipping non-finite updates if any are allowed).
    max_bad_steps = config.get("max_bad_steps", 0)
    train_step = make_train_step(
        stage.loss,
        tx,
        schedule,
        ema_decay=config.optim.ema_decay,
        grad_accum_steps=config.get("grad_accum_steps", 1),
        skip_nonfinite=max_bad_steps > 0,
    )
    frozen = stage.frozen_params()  # read by the loss, never trained nor checkpointed
    if frozen is not None:
        frozen = jax.device_put(frozen, replicated(mesh))
    t0 = time.perf_counter()
    compiled, flops_per_step = _compile_step(
        train_step, state, shardings, batch_spec, mesh, rules, step_key, frozen, config
    )
    log.info("Compiled train step in %.1fs.", time.perf_counter() - t0)
    peak = peak_flops_per_device(mesh.devices.flat[0], config.get("peak_tflops"))
    peak_total = None if peak is None else peak * mesh.size

    # 5. The loop.
    param_norm = jax.jit(optax.tree.norm)  # logged, not computed every step
    writer = MetricsWriter(workdir)
    cleanup.callback(writer.close)
    last_saved = checkpointer.latest_step()
    step = start_step
    progress = tqdm(
        total=config.num_steps,
        initial=start_step,
        desc=config.get("name") or config.stage,
        unit="step",
        disable=jax.process_index() != 0 or not config.get("progress_bar", True),
        dynamic_ncols=True,
    )
    cleanup.callback(progress.close)
    window_start, window_steps = time.perf_counter(), 0

    def save(at_step: int) -> None:
        nonlocal last_saved
        # The data position, and the non-finite steps skipped so far (their bound spans resumes).
        position = {**loader.state(), "nonfinite_skipped": nonfinite_skipped}
        checkpointer.save(at_step, state, config.to_dict(), position)
        last_saved = at_step

    checked = start_step

    def check_finite(at_step: int, step_metrics: dict) -> None:
        """Once per step: a non-finite loss or gradient norm is skipped (the step applied no
        update) while fewer than `max_bad_steps` were, else the run stops."""
        nonlocal checked, nonfinite_skipped
        if at_step <= checked:
            return
        checked = at_step
        watchdog.beat(at_step)
        loss, grad_norm = float(step_metrics["loss"]), float(step_metrics["grad_norm"])
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        if nonfinite_skipped < max_bad_steps:
            nonfinite_skipped += 1
            log.warning(
                "%s: loss=%s, grad_norm=%s at step %d; its update is skipped (%d of "
                "max_bad_steps=%d).",
                config.stage,
                loss,
                grad_norm,
                at_step,
                nonfinite_skipped,
                max_bad_steps,
            )
            return
        checkpointer.wait()
        skipped = f" after skipping {nonfinite_skipped} such steps" if max_bad_steps else ""
        raise NonFiniteLossError(
            f"{config.stage}: loss={loss}, grad_norm={grad_norm} at step {at_step}{skipped}. "
            f"Last good checkpoint: "
            f"{'none' if last_saved is None else f'step {last_saved}'} in "
            f"{checkpointer.directory}. Lower the learning rate or check the data, then "
            "rerun to resume from it (--config.checkpoint.restore_step=N resumes from an "
            "earlier step; --config.max_bad_steps=K skips up to K such steps)."
        )

    # The host reads a step's loss only after queueing the next step, so the accelerator never
    # waits for Python between steps; a step that is logged, evaluated or saved is checked at once.
    unchecked: tuple[int, dict] | None = None
    with _SigtermFlag() as sigterm:
        while step < config.num_steps:
            batch = global_batch(next(loader), mesh)
            state, metrics = compiled(state, batch, step_key, frozen)
            step += 1
            window_steps += 1
            if unchecked is not None:
                check_finite(*unchecked)
            unchecked = (step, metrics)
            progress.update(1)
            if step % config.log_every == 0 or step == config.num_steps:
                check_finite(step, metrics)
                dt = time.perf_counter() - window_start
                rate = window_steps / dt
                scalars = {k: float(v) for k, v in metrics.items()}
                scalars["param_norm"] = float(param_norm(state.params))
                if max_bad_steps:
                    scalars["nonfinite_skipped"] = nonfinite_skipped
                scalars["steps_per_sec"] = rate
                scalars["examples_per_sec"] = rate * config.batch_size
                scalars["tflops_per_sec"] = rate * flops_per_step / 1e12
                if peak_total:
                    scalars["mfu"] = rate * flops_per_step / peak_total
                # Skipped / converted examples of this process's reads (bad-input counters).
                stats = train_source.stats() if hasattr(train_source, "stats") else {}
                scalars.update({f"data/{k}": v for k, v in stats.items()})
                writer.write_scalars(step, scalars)
                progress.set_postfix(
                    loss=f"{scalars['loss']:.4f}", ex_s=f"{rate * config.batch_size:.0f}"
                )
                window_start, window_steps = time.perf_counter(), 0
            if config.get("eval_every") and (
                step % config.eval_every == 0 or step == config.num_steps
            ):
                check_finite(step, metrics)
                with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                    ev = stage.evaluate(state.ema_params, jax.random.fold_in(eval_key, step))
                if ev:
                    writer.write_scalars(step, {f"eval/{k}": v for k, v in ev.items()})
            preempted = sigterm.requested or (
                jax.process_count() > 1 and checkpointer.reached_preemption(step)
            )
            if step % ckpt_cfg.every_steps == 0 or step == config.num_steps or preempted:
                check_finite(step, metrics)
                save(step)
            if preempted:
                log.warning("Preemption requested: saved step %d and stopping.", step)
                break

    checkpointer.wait()
    if step < config.num_steps:
        raise TrainingStopped(
            f"{config.stage}: stopped at step {step} of {config.num_steps} on a preemption "
            f"notice (SIGTERM); checkpoint step {step} is saved in {checkpointer.directory}. "
            "Rerun the same command to resume."
        )
    return state
