"""Precompute CLIP embeddings of an image–caption source into embedding shards.

Training the prior and the decoder at scale reads CLIP embeddings computed once, not CLIP in
the loop. Example i of the written shards is example i of the (unshuffled) source, so stages
that also need the image (the decoder) pair them by index. Resumable: a rerun skips the
examples already in complete shards. Every host runs the same command at once and embeds its
own contiguous range (`--host` / `--num-hosts`, by default the JAX processes of a cluster
environment); the shards of all hosts read as one directory.

  python -m dalle2_jax.precompute --clip-workdir runs/shapes --source shapes:train:64 \\
      --num-examples 20000 --out runs/shapes/embeddings/train
  python -m dalle2_jax.precompute --hf-clip path/to/clip-vit-large-patch14 \\
      --source "webdataset:/data/shards/{00000..00099}.tar:224" --num-examples 1000000 --out emb/
"""

from __future__ import annotations

import argparse
import sys

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from dalle2_jax.data.embeddings import ShardWriter
from dalle2_jax.data.sources import open_source
from dalle2_jax.encoders import ClipEncoder
from dalle2_jax.train import distributed


def host_range(num_examples: int, host: int, num_hosts: int) -> tuple[int, int]:
    """[start, stop) of the examples host `host` of `num_hosts` embeds: contiguous, balanced."""
    if not 0 <= host < num_hosts:
        raise ValueError(f"host {host} is not in [0, {num_hosts}).")
    return num_examples * host // num_hosts, num_examples * (host + 1) // num_hosts


def precompute_embeddings(
    encoder: ClipEncoder,
    source,
    out_dir: str,
    *,
    num_examples: int,
    batch_size: int = 256,
    shard_size: int = 10_000,
    source_spec: str = "",
    host: int | None = None,
    num_hosts: int | None = None,
    progress: bool = True,
) -> int:
    """Encode examples [0, num_examples) of `source` (opened from `source_spec`, recorded in
    the shards) into shards under `out_dir`. Each of `num_hosts` hosts (default: the JAX
    processes) embeds its own contiguous range with its local devices; the shards of all hosts
    read as one directory. Continues after the complete shards of an earlier run; returns the
    number of this host's examples on disk."""
    host = jax.process_index() if host is None else host
    num_hosts = jax.process_count() if num_hosts is None else num_hosts
    num_examples = min(num_examples, len(source))
    start, stop = host_range(num_examples, host, num_hosts)
    image_size = int(encoder.config.vision.image_size)

    out = ShardWriter(
        out_dir,
        shard_size=shard_size,
        clip_model=encoder.name,
        source=source_spec,
        image_size=image_size,
        start=start,
        stop=stop,
        embedding=encoder.embedding,
    )
    done = start + out.num_complete
    with (
        out,
        tqdm(
            total=stop - start,
            initial=done - start,
            unit="ex",
            desc=f"embed (host {host})" if num_hosts > 1 else "embed",
            disable=not progress,
        ) as bar,
    ):
        for lo in range(done, stop, batch_size):
            examples = [source[i] for i in range(lo, min(lo + batch_size, stop))]
            images = np.stack([e["image"] for e in examples])
            captions = [e["caption"] for e in examples]
            out.add(**encoder.encode(images, captions), captions=captions)
            bar.update(len(examples))
    return out.num_complete  # the last shard was written when the `with` closed it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--clip-workdir", help="workdir of a CLIP stage trained with train.py")
    which.add_argument("--hf-clip", help="Hugging Face CLIP checkpoint directory")
    parser.add_argument("--source", required=True, help="e.g. shapes:train:64 (see open_source)")
    parser.add_argument("--out", required=True, help="output directory of embedding shards")
    parser.add_argument("--num-examples", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument(
        "--host", type=int, default=None, help="this host's index (default: the JAX process)"
    )
    parser.add_argument(
        "--num-hosts", type=int, default=None, help="hosts sharing the work (default: JAX's)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.host is None:  # a cluster environment (SLURM, TPU pod, ...) makes every host a process
        distributed.maybe_initialize(
            ml_collections.ConfigDict({"distributed": {"enabled": "auto"}})
        )
    try:
        encoder = (
            ClipEncoder.from_clip_workdir(args.clip_workdir)
            if args.clip_workdir
            else ClipEncoder.from_hf(args.hf_clip)
        )
        source = open_source(args.source, image_size=encoder.config.vision.image_size)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = precompute_embeddings(
        encoder,
        source,
        args.out,
        num_examples=args.num_examples,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        source_spec=args.source,
        host=args.host,
        num_hosts=args.num_hosts,
    )
    print(f"{n} examples embedded in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
