"""Train one unCLIP stage, or every stage of a cascade config: flags -> config -> trainer.

  python train.py --config configs/shapes.py[:variant] --workdir runs/shapes \
      [--config.field=value ...] [--verbose]

The terminal shows progress and, when something goes wrong, one paragraph saying what and
what to do; the full detail (tracebacks, library logs) is in <workdir>/train.log, and
`--verbose` (or DALLE2_VERBOSE=1) shows it on the terminal too. Exit codes (docs/faults.md):

  0   trained to num_steps
  75  stopped cleanly at a checkpoint (SIGTERM / preemption): rerun the same command to resume
  3   a fault that needs you (corrupt checkpoint, disk full, NaN loss, lost process, bad data):
      the paragraph says what to do
  1   an unexpected error (a bug): its first line here, the traceback in train.log
"""

from absl import app, flags
from ml_collections import config_flags

from dalle2_jax.cascade import prepare_stage, train_cascade
from dalle2_jax.train import console
from dalle2_jax.train.loop import train_and_evaluate
from dalle2_jax.train.mesh import set_cpu_devices

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_bool("verbose", False, "Show library logs and tracebacks on the terminal too.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    config = FLAGS.config
    set_cpu_devices(config.get("cpu_devices", 0))  # before anything starts JAX
    verbose = console.verbose_requested(FLAGS.verbose)
    process_id = (config.get("distributed") or {}).get("process_id")
    with console.boundary(FLAGS.workdir, verbose, process_id):
        # Recorded in each stage's config.json, so "train it with ..." messages name this file.
        config_file = config_flags.get_config_filename(FLAGS["config"]).split(":")[0]
        for stage_config in config.stages.values() if config.get("cascade") else [config]:
            with stage_config.unlocked():
                stage_config.config_file = config_file
        if config.get("cascade"):
            train_cascade(config, FLAGS.workdir)
        else:
            prepare_stage(config, FLAGS.workdir)
            train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
