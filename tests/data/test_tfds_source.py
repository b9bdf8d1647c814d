"""TfdsSource over a tiny array_record dataset prepared here (no TensorFlow needed)."""

from __future__ import annotations

import numpy as np
import pytest

from dalle2_jax.data.tfds import TfdsSource
from dalle2_jax.data.transforms import to_uint8

tfds = pytest.importorskip("tensorflow_datasets")
SIZE = 16


class Dalle2JaxTinyCaptions(tfds.core.GeneratorBasedBuilder):
    """Images given as encoded bytes (numpy arrays would need TF to encode), nested captions."""

    VERSION = tfds.core.Version("1.0.0")
    SAMPLES: list = []

    def _info(self):
        features = {
            "picture": tfds.features.Image(shape=(None, None, 3)),
            "meta": {"text": tfds.features.Text(), "id": np.int32},
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, sample in enumerate(self.SAMPLES):
            caption = sample.caption.decode() if sample.caption is not None else ""
            yield i, {"picture": sample.image, "meta": {"text": caption, "id": i}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, mixed_samples):
    directory = tmp_path_factory.mktemp("tfds")
    Dalle2JaxTinyCaptions.SAMPLES = mixed_samples
    builder = Dalle2JaxTinyCaptions(data_dir=str(directory), file_format="array_record")
    builder.download_and_prepare()
    return directory


def test_reads_array_record_and_counts_bad_samples(data_dir, mixed_samples):
    source = TfdsSource(
        "dalle2_jax_tiny_captions",
        SIZE,
        split="train",
        data_dir=data_dir,
        image_key="picture",
        caption_key="meta/text",
    )
    # TFDS stores every record (and shuffles them), so captionless samples are read-time skips.
    assert len(source) == len(mixed_samples)
    truth = {s.served_caption: s for s in mixed_samples if s.served_caption}
    served = [source[i] for i in range(len(source))]
    assert {e["caption"] for e in served} == set(truth)
    for example in served:
        sample = truth[example["caption"]]
        center = to_uint8(example["image"])[SIZE // 2, SIZE // 2].astype(int)
        np.testing.assert_allclose(center, sample.rgb, atol=sample.tolerance + 1)
    stats = source.stats()
    assert stats["skipped_corrupt"] == 3
    assert stats["skipped_empty_caption"] == 3  # No caption, an empty one, a blank one.
    assert stats["upscaled_small"] == 1


def test_missing_dataset_raises_naming_it(data_dir):
    with pytest.raises(ValueError, match="no_such_dataset"):
        TfdsSource("no_such_dataset", SIZE, data_dir=data_dir)
