"""tf.data pipelines over an :class:`ImageSource`.

Images are decoded and resized once, kept as uint8 (cached in memory when the split is small,
which makes shuffle buffers and iterator checkpoints 4× smaller than float), and turned into
float RGB only after batching, vectorised over the batch.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_datasets as tfds

from selfsup.datasets.preprocess import resize_square, to_float_rgb
from selfsup.datasets.sources import ImageSource

AUTOTUNE = tf.data.AUTOTUNE
# Fashion-MNIST, CIFAR and STL-10 fit in memory decoded; bigger sets stream from disk.
CACHE_MAX_EXAMPLES = 200_000


def raw_image_label_dataset(source: ImageSource, split: str, image_size: int,
                            input_context: tf.distribute.InputContext | None = None,
                            first: int | None = None) -> tf.data.Dataset:
    """Yields ``(uint8 image [size, size, c], int64 label)`` (label −1 when the set has none).

    With an ``input_context`` of several input pipelines each reads its own shard of files.
    ``first``: only the first examples in file order (read once, so not cached).
    """
    source.check_split(split)
    read_config = None
    if input_context is not None and input_context.num_input_pipelines > 1:
        read_config = tfds.ReadConfig(input_context=input_context)
    dataset = source.builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    if source.is_folder:
        # Files that fail to decode are dropped with a warning instead of ending the run: splits
        # too big to check when opened, or files damaged since (image_folder module docstring).
        dataset = dataset.ignore_errors(log_warning=True)
    if first is not None:
        dataset = dataset.take(first)

    def convert(example):
        image = resize_square(example[source.image_key], image_size)
        label = (tf.cast(example[source.label_key], tf.int64) if source.label_key
                 else tf.constant(-1, tf.int64))
        return image, label

    dataset = dataset.map(convert, num_parallel_calls=AUTOTUNE)
    if first is None and source.num_examples(split.split("[")[0]) <= CACHE_MAX_EXAMPLES:
        dataset = dataset.cache()
    return dataset


def image_label_dataset(source: ImageSource, split: str, image_size: int,
                        input_context: tf.distribute.InputContext | None = None,
                        first: int | None = None) -> tf.data.Dataset:
    """Yields ``(float32 RGB image in [0, 1], int64 label)``, unbatched, in file order
    (``first``: only the first examples, not cached)."""
    dataset = raw_image_label_dataset(source, split, image_size, input_context, first)
    return dataset.map(lambda image, label: (to_float_rgb(image), label),
                       num_parallel_calls=AUTOTUNE)


def training_images(source: ImageSource, split: str, image_size: int, batch_size: int,
                    seed: int, input_context: tf.distribute.InputContext | None = None,
                    shuffle_buffer: int = 10_000) -> tf.data.Dataset:
    """Endless, seeded-shuffled batches of float RGB images (labels dropped) for pretraining."""
    dataset = raw_image_label_dataset(source, split, image_size, input_context)
    dataset = dataset.map(lambda image, label: image)
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
    return dataset.map(to_float_rgb, num_parallel_calls=AUTOTUNE)


def training_image_labels(source: ImageSource, split: str, image_size: int, batch_size: int,
                          seed: int, input_context: tf.distribute.InputContext | None = None,
                          shuffle_buffer: int = 10_000) -> tf.data.Dataset:
    """Endless, seeded-shuffled batches of ``(float RGB images, int64 labels)`` for supervised
    training (:func:`training_images` with the labels kept)."""
    dataset = raw_image_label_dataset(source, split, image_size, input_context)
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
    return dataset.map(lambda images, labels: (to_float_rgb(images), labels),
                       num_parallel_calls=AUTOTUNE)


def with_batch_seeds(batches: tf.data.Dataset, seed: int, stream: int = 0) -> tf.data.Dataset:
    """Pairs every batch with its own stateless seed ``[seed, stream · 2³² + batch index]``.

    The one source of per-batch randomness of the pipelines (crops, tiles, noise, masks,
    tints): ``stream`` separates input pipelines that share ``seed`` (e.g. one per worker;
    pass the input context's ``input_pipeline_id``), and a resumed run that skips consumed
    batches replays the same seeds.
    """
    counter = tf.data.Dataset.counter(start=stream << 32, dtype=tf.int64)
    return tf.data.Dataset.zip((batches, counter.map(
        lambda index: tf.stack([tf.constant(seed, tf.int64), index]))))
