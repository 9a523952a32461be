"""Input pipelines: tfds and image-folder sources, preprocessing, pretraining batches; video
sources (folder, tfds, the offline sample_videos) and clip sampling."""

from selfsup.datasets.clips import evaluation_clips, training_clips
from selfsup.datasets.pipelines import (
    image_label_dataset,
    raw_image_label_dataset,
    training_images,
)
from selfsup.datasets.preprocess import resize_square, to_float_rgb, to_rgb
from selfsup.datasets.sources import ImageSource, open_source
from selfsup.datasets.video_decode import VIDEO_EXTENSIONS, VideoDecodeError, decode_video
from selfsup.datasets.video_sources import (
    SAMPLE_VIDEOS,
    VIDEO_FOLDER_PREFIX,
    VideoSource,
    is_video_dataset,
    open_video_source,
)

__all__ = ["SAMPLE_VIDEOS", "VIDEO_EXTENSIONS", "VIDEO_FOLDER_PREFIX", "ImageSource",
           "VideoDecodeError", "VideoSource", "decode_video", "evaluation_clips",
           "image_label_dataset", "is_video_dataset", "open_source", "open_video_source",
           "raw_image_label_dataset", "resize_square", "to_float_rgb", "to_rgb",
           "training_clips", "training_images"]
