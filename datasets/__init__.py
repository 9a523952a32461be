"""Input pipelines: tfds and image-folder sources, preprocessing, pretraining batches."""

from selfsup.datasets.pipelines import (
    image_label_dataset,
    raw_image_label_dataset,
    training_images,
)
from selfsup.datasets.preprocess import resize_square, to_float_rgb, to_rgb
from selfsup.datasets.sources import ImageSource, open_source

__all__ = ["ImageSource", "image_label_dataset", "open_source", "raw_image_label_dataset",
           "resize_square", "to_float_rgb", "to_rgb",
           "training_images"]
