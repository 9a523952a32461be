"""Bad data: every kind of awkward or broken file has one documented outcome, never a traceback.

Image folders: grayscale, RGBA, 16-bit and tiny images are converted / resized (checked against
numpy references of the pixels written); empty, truncated and non-image files are skipped and
named; an empty split or a folder with no readable image is a one-line ConfigError. Video
folders: a broken file is a one-line error naming it; tiny frames are resized.
"""

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from helpers import ONE_STAGE
from selfsup.datasets import open_source, open_video_source, raw_image_label_dataset
from selfsup.datasets.image_folder import SkippedFile, skipped_message
from selfsup.datasets.video_decode import VideoDecodeError, decode_video
from selfsup.models.registry import ConfigError

SIZE = 12  # images written at the pipeline's size pass through the resize unchanged


def png(pixels: np.ndarray) -> bytes:
    return tf.io.encode_png(pixels).numpy()


def jpeg(pixels: np.ndarray) -> bytes:
    return tf.io.encode_jpeg(pixels, quality=100).numpy()


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """``train/<kind>/`` one file per kind; ``test/empty/`` holds only a text file.

    Returns the root and, per readable kind, the RGB pixels the pipeline must yield.
    """
    root = tmp_path_factory.mktemp("bad_images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)
    alpha = rng.integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)
    deep = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint16)
    dot = rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)
    files = {
        "rgb/a.png": png(rgb),
        "gray/a.png": png(gray),
        "rgba/a.png": png(np.concatenate([rgb, alpha], axis=-1)),
        # v · 257 spans 0..65535 exactly as v spans 0..255, so 8 bits give v back.
        "deep16/a.png": png(deep * 257),
        "tiny/dot.png": png(dot),
        "tiny/three_by_five.jpg": jpeg(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)),
        "broken/truncated.png": png(rgb)[:40],
        "broken/truncated.jpg": jpeg(rgb)[:len(jpeg(rgb)) // 2],
        "broken/empty.jpg": b"",
        "broken/page.png": b"<html><body>404 Not Found</body></html>\n",
    }
    for name, data in files.items():
        path = root / "train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "test" / "empty").mkdir(parents=True)
    (root / "test" / "empty" / "notes.txt").write_text("no images here\n")
    expected = {"rgb": rgb, "gray": np.repeat(gray, 3, axis=-1), "rgba": rgb,
                "deep16": deep.astype(np.uint8), "dot": np.broadcast_to(dot, (SIZE, SIZE, 3))}
    return root, expected


def test_every_bad_image_kind_is_converted_skipped_or_reported(bad_folder):
    root, expected = bad_folder
    source = open_source(f"image_folder:{root}")
    # 10 files in train: 6 readable (rgb, gray, rgba, 16-bit, 1×1, 3×5), 4 skipped.
    assert source.num_examples("train") == 6
    report = source.skipped_report("train")
    assert report == ("skipped 4 unreadable files in train: train/broken/empty.jpg (empty file), "
                      "train/broken/page.png (not an image), train/broken/truncated.jpg "
                      "(truncated or corrupt), train/broken/truncated.png (truncated or corrupt)")
    images = {}
    for image, label in raw_image_label_dataset(source, "train", SIZE).as_numpy_iterator():
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        images.setdefault(source.builder.info.features["label"].int2str(label), []).append(image)
    assert sorted(images) == ["deep16", "gray", "rgb", "rgba", "tiny"]
    assert len(images["tiny"]) == 2
    for kind in ("rgb", "gray", "rgba", "deep16"):
        np.testing.assert_array_equal(images[kind][0], expected[kind], err_msg=kind)
    # The 1×1 image is upsampled to a constant image of its one pixel.
    assert any(np.abs(image.astype(int) - expected["dot"]).max() <= 1 for image in images["tiny"])


def test_an_empty_split_is_a_one_line_error_naming_it(bad_folder):
    root, _ = bad_folder
    source = open_source(f"image_folder:{root}")
    with pytest.raises(ConfigError) as error:
        source.check_split("test")
    message = str(error.value)
    assert "split 'test'" in message and "holds no readable images" in message
    assert "<root>/<split>/<label>/" in message and "\n" not in message


def test_folders_without_readable_images_are_one_line_errors(tmp_path):
    nothing = tmp_path / "nothing" / "train" / "cat"
    nothing.mkdir(parents=True)
    (nothing / "readme.txt").write_text("x")
    broken = tmp_path / "broken" / "train" / "cat"
    broken.mkdir(parents=True)
    (broken / "a.jpg").write_bytes(b"")
    (broken / "b.png").write_bytes(b"GIF87a")
    for root, detail in ((tmp_path / "nothing", "holds no readable images;"),
                         (tmp_path / "broken", "(2 unreadable files skipped)"),
                         (tmp_path / "missing", "does not exist")):
        with pytest.raises(ConfigError) as error:
            open_source(f"image_folder:{root}")
        assert str(root) in str(error.value) and detail in str(error.value)
        assert "\n" not in str(error.value)


def test_image_folders_refuse_split_slices_in_one_line(bad_folder):
    root, _ = bad_folder
    with pytest.raises(ConfigError, match=r"image folders take whole splits, not 'train\[:3\]'"):
        open_source(f"image_folder:{root}").check_split("train[:3]")


def test_skip_report_counts_all_files_and_names_the_first_five():
    files = tuple(SkippedFile(f"train/x/{i}.png", "empty file") for i in range(7))
    message = skipped_message("train", files)
    assert message.startswith("skipped 7 unreadable files in train: train/x/0.png (empty file)")
    assert "train/x/4.png" in message and "train/x/5.png" not in message
    assert message.endswith("(first 5 shown)")
    assert skipped_message("val", files[:1]) == (
        "skipped 1 unreadable file in val: train/x/0.png (empty file)")


def test_a_file_damaged_after_opening_is_dropped_not_raised(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "train" / "cat"
    folder.mkdir(parents=True)
    for i in range(4):
        (folder / f"{i}.png").write_bytes(png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    source = open_source(f"image_folder:{tmp_path}")
    assert source.num_examples("train") == 4 and source.skipped_report("train") is None
    (folder / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert sum(1 for _ in raw_image_label_dataset(source, "train", 8)) == 3


def test_preflight_reports_the_skipped_files_of_the_training_split(bad_folder):
    from selfsup.tasks.base import task_class
    from selfsup.tasks.preflight import preflight

    root, _ = bad_folder
    cls = task_class("rotnet")
    task = cls(cls.config_class(dataset=f"image_folder:{root}", image_size=SIZE,
                                global_batch_size=4))
    out = io.StringIO()
    preflight(task, tf.distribute.OneDeviceStrategy("/cpu:0"), out)
    assert out.getvalue() == task.source.skipped_report("train") + "\n"


@pytest.mark.slow
def test_training_on_a_bad_folder_reports_the_skipped_files_and_runs(bad_folder, tmp_path):
    from selfsup.tasks.base import task_class
    from selfsup.tasks.trainer import TrainerConfig
    from selfsup.tasks.training import run_training

    root, _ = bad_folder
    config = task_class("rotnet").config_class(
        dataset=f"image_folder:{root}", image_size=SIZE, global_batch_size=4,
        backbone_kwargs=ONE_STAGE)
    out = io.StringIO()
    run_training("rotnet", config, TrainerConfig(model_dir=str(tmp_path / "run"), train_steps=1,
                                                 log_every=1, checkpoint_every=1),
                 "one_device", out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("skipped 4 unreadable files in train: train/broken/empty.jpg")
    assert any(line.startswith("step 1/1") for line in lines)


# --- video folders ---------------------------------------------------------------------------


def write_video(path: Path, frames: np.ndarray) -> Path:
    """RGB frames → lossless FFV1 .avi."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    return path


def test_tiny_video_frames_are_resized_to_the_frame_size(tmp_path):
    # 2 × 4 px frames (OpenCV's writer rounds odd sizes down to even ones).
    frames = np.full((4, 2, 4, 3), 200, np.uint8)
    frames[..., 0] = 10  # a flat colour survives any resize exactly
    decoded = decode_video(write_video(tmp_path / "tiny.avi", frames), 16)
    assert decoded.shape == (4, 16, 32, 3)  # shorter side 16, aspect kept
    np.testing.assert_array_equal(decoded, np.broadcast_to(frames[:1, :1, :1], decoded.shape))


def test_a_broken_video_fails_before_training_naming_the_file_and_the_fix(tmp_path):
    from selfsup.tasks.base import task_class
    from selfsup.tasks.trainer import TrainerConfig
    from selfsup.tasks.training import run_training

    folder = tmp_path / "videos" / "train" / "cat"
    folder.mkdir(parents=True)
    write_video(folder / "good.avi", np.zeros((6, 16, 16, 3), np.uint8))
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 then nothing")
    assert open_video_source(f"video_folder:{tmp_path / 'videos'}").num_videos("train") == 2
    config = task_class("rotnet3d").config_class(
        dataset=f"video_folder:{tmp_path / 'videos'}", image_size=8, frame_size=8,
        clip_length=2, global_batch_size=2)
    with pytest.raises(VideoDecodeError) as error:
        run_training("rotnet3d", config, TrainerConfig(model_dir=str(tmp_path / "run")),
                     "one_device", out=io.StringIO())
    message = str(error.value)
    assert "broken.mp4" in message and "remove or re-encode" in message and "\n" not in message
    assert not (tmp_path / "run" / "checkpoint").exists()
