"""Decoders, discriminators and picture grids: resolution plans worked by hand, shapes,
layouts, and a grid against a plain loop."""

import numpy as np
import pytest
import tensorflow as tf

from selfsup.models import build_backbone
from selfsup.models.decoders import ImageDecoder, last_spatial_endpoint, upsampling_plan
from selfsup.models.discriminators import ConvDiscriminator, JointDiscriminator
from selfsup.tasks.pictures import image_grid, write_png


@pytest.mark.parametrize("output_size, plan", [
    (28, (7, 2)),    # 7 → 14 → 28
    (32, (4, 3)),    # 4 → 8 → 16 → 32
    (96, (6, 4)),    # 6 → 96
    (224, (7, 5)),   # 7 → 224, DCGAN-like depth for ImageNet sizes
    (4, (4, 0)),
])
def test_vector_plans_start_between_4_and_8_and_reach_the_size(output_size, plan):
    assert upsampling_plan(output_size) == plan


@pytest.mark.parametrize("input_size, output_size, plan", [
    (7, 28, (7, 2)),     # resnet_small's res4 at 28 px
    (13, 224, (13, 4)),  # AlexNet conv5: 13 · 16 = 208, then resized to 224
    (7, 7, (7, 0)),      # colorization targets at stride 4 of 28 px
    (8, 4, (8, 0)),      # a map bigger than the output is resized down
])
def test_map_plans_double_while_they_fit(input_size, output_size, plan):
    assert upsampling_plan(output_size, input_size) == plan


def test_decoder_from_a_vector_is_the_dcgan_stack():
    decoder = ImageDecoder(28, 3, width=8, output_activation="sigmoid")
    images = decoder(tf.random.normal([2, 10]), training=False)
    assert images.shape == (2, 28, 28, 3)
    assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0
    # Two stride-2 stages with 16 and 8 channels after a projection to 7×7×32.
    assert decoder.project.kernel.shape == (10, 7 * 7 * 32)
    assert [layer.kernel.shape for layer in decoder.upsample] == [(4, 4, 16, 32), (4, 4, 8, 16)]
    assert decoder.out.kernel.shape == (3, 3, 8, 3)


def test_decoder_from_a_map_upsamples_then_resizes_to_any_size():
    decoder = ImageDecoder(32, 5, input_size=13, width=4)
    outputs = decoder(tf.random.normal([1, 13, 13, 6]), training=False)
    assert outputs.shape == (1, 32, 32, 5)  # 13 → 26, then bilinear to 32
    assert len(decoder.upsample) == 1
    same_size = ImageDecoder(7, 313, input_size=7)
    assert same_size(tf.random.normal([1, 7, 7, 64])).shape == (1, 7, 7, 313)
    assert same_size.upsample == []


def test_last_spatial_endpoint_skips_the_vectors():
    resnet = build_backbone("resnet_small", input_size=28)
    assert last_spatial_endpoint(resnet, 28) == ("res4", (7, 7, 64))
    assert last_spatial_endpoint(resnet, 64) == ("res4", (16, 16, 64))


def test_dcgan_discriminator_halves_to_4x4_without_batchnorm_on_its_input_layer():
    discriminator = ConvDiscriminator(28, width=4)
    logits = discriminator(tf.random.uniform([3, 28, 28, 3]), training=False)
    assert logits.shape == (3, 1)
    trunk = discriminator.trunk
    assert [conv.filters for conv in trunk.convs] == [4, 8, 16]  # 28 → 14 → 7 → 4
    assert trunk.norms[0] is None and all(norm is not None for norm in trunk.norms[1:])
    joint = JointDiscriminator(16, width=4, joint_units=8)
    assert joint((tf.random.uniform([2, 16, 16, 3]), tf.random.normal([2, 5]))).shape == (2, 1)


def test_image_grid_matches_a_plain_loop_and_round_trips_through_png(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(-0.2, 1.2, size=(5, 4, 3, 3)).astype(np.float32)
    grid = image_grid(images, columns=3, padding=1)
    expected = np.full((2 * 5 + 1, 3 * 4 + 1, 3), 255, np.uint8)
    for index in range(5):
        row, column = divmod(index, 3)
        cell = np.round(np.clip(images[index], 0, 1) * 255).astype(np.uint8)
        expected[1 + row * 5:1 + row * 5 + 4, 1 + column * 4:1 + column * 4 + 3] = cell
    np.testing.assert_array_equal(grid, expected)
    assert image_grid(images).shape == (2 * 6 + 2, 3 * 5 + 2, 3)  # 3 columns by default
    path = write_png(tmp_path / "sub" / "grid.png", grid)
    np.testing.assert_array_equal(tf.io.decode_png(path.read_bytes()).numpy(), grid)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]
    with pytest.raises(ValueError, match="non-empty"):
        image_grid(np.zeros((0, 2, 2, 3)))
