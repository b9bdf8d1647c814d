"""Train one unCLIP stage, or every stage of a cascade config: flags -> config -> trainer.

  python train.py --config configs/shapes.py[:variant] --workdir runs/shapes \
      [--config.field=value ...]
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from dalle2_jax.cascade import prepare_stage, train_cascade
from dalle2_jax.train.loop import train_and_evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # library chatter (orbax, grain) off
    std_logging.getLogger("dalle2_jax").setLevel(std_logging.INFO)
    config = FLAGS.config
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
