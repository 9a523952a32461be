"""The ab quantisation of Zhang et al. 2016 and the maths around it, against numpy references."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
from sklearn.neighbors import NearestNeighbors

from selfsup.datasets import color_bins
from selfsup.datasets.color import rgb_to_lab


def srgb_cube_surface(levels: int = 256) -> np.ndarray:
    """Every colour on the 6 faces of the RGB cube at ``levels`` values per axis ``[n, 3]``.

    The ab projection of the gamut solid equals that of its surface: at a fixed ab, moving
    along L leaves the solid through its surface at the same ab.
    """
    grid = np.linspace(0.0, 1.0, levels, dtype=np.float32)
    u, v = (plane.ravel() for plane in np.meshgrid(grid, grid))
    faces = []
    for axis, value in itertools.product(range(3), (0.0, 1.0)):
        others = [u, v]
        columns = [others.pop(0) if channel != axis else np.full_like(u, value)
                   for channel in range(3)]
        faces.append(np.stack(columns, axis=1))
    return np.concatenate(faces)


@pytest.fixture(scope="module")
def gamut_ab() -> np.ndarray:
    return rgb_to_lab(tf.constant(srgb_cube_surface()))[:, 1:].numpy()


def test_there_are_exactly_313_bins_on_the_grid_of_10():
    centres = color_bins.ab_bin_centres()
    assert centres.shape == (313, 2) and color_bins.NUM_AB_BINS == 313
    assert len({tuple(row) for row in centres}) == 313
    np.testing.assert_array_equal(centres % 10, 0)


def test_every_srgb_colour_cell_is_a_bin(gamut_ab):
    bins = {tuple(row) for row in color_bins.ab_bin_centres().astype(int)}
    cells = {tuple(row) for row in (np.round(gamut_ab / 10.0) * 10).astype(int)}
    assert cells <= bins, sorted(cells - bins)
    # The published set is a superset with a margin: the exact gamut reaches fewer cells.
    assert 250 < len(cells) < 313


def test_every_srgb_colour_is_within_half_a_cell_diagonal_of_a_bin(gamut_ab):
    search = NearestNeighbors(n_neighbors=1).fit(color_bins.ab_bin_centres().astype(np.float64))
    distances, _ = search.kneighbors(gamut_ab.astype(np.float64))
    assert distances.max() <= 5.0 * math.sqrt(2.0) + 1e-4


def numpy_soft_encoding(ab: np.ndarray, centres: np.ndarray, k: int, sigma: float
                        ) -> np.ndarray:
    """Zhang et al. 2016 §2.1 written out pixel by pixel."""
    flat = ab.reshape(-1, 2).astype(np.float64)
    centres = centres.astype(np.float64)
    out = np.zeros((len(flat), len(centres)))
    for i, value in enumerate(flat):
        distances = np.sqrt(((centres - value) ** 2).sum(axis=1))
        nearest = np.argsort(distances, kind="stable")[:k]
        weights = np.exp(-distances[nearest] ** 2 / (2 * sigma ** 2))
        out[i, nearest] = weights / weights.sum()
    return out.reshape(*ab.shape[:-1], len(centres))


@pytest.mark.parametrize("neighbours", [1, 5, 10])
def test_soft_targets_match_a_numpy_loop_and_sum_to_one(neighbours):
    rng = np.random.default_rng(0)
    ab = rng.uniform(-100, 100, size=(2, 3, 4, 2)).astype(np.float32)
    centres = color_bins.ab_bin_centres()
    got = color_bins.soft_encode_ab(ab, centres, neighbours).numpy()
    assert got.shape == (2, 3, 4, 313)
    np.testing.assert_allclose(got, numpy_soft_encoding(ab, centres, neighbours, 5.0),
                               atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-5)
    assert ((got > 0).sum(axis=-1) <= neighbours).all()


def test_soft_target_on_a_bin_centre_is_mostly_that_bin():
    # On a centre, the 4 grid neighbours lie at 10: weight exp(−100/50) = e⁻² each.
    got = color_bins.soft_encode_ab(np.array([[0.0, 0.0]], np.float32), neighbours=5).numpy()
    index = [tuple(row) for row in color_bins.ab_bin_centres()].index((0.0, 0.0))
    assert got[0, index] == pytest.approx(1.0 / (1.0 + 4.0 * math.exp(-2.0)), rel=1e-5)


def test_nearest_bin_matches_numpy():
    rng = np.random.default_rng(1)
    ab = rng.uniform(-110, 110, size=(50, 2)).astype(np.float32)
    centres = color_bins.ab_bin_centres()
    expected = [np.argmin(((centres - value) ** 2).sum(axis=1)) for value in ab]
    np.testing.assert_array_equal(color_bins.nearest_ab_bin(ab).numpy(), expected)


def test_smoothing_matches_a_numpy_double_loop():
    rng = np.random.default_rng(2)
    centres = color_bins.ab_bin_centres()
    distribution = rng.dirichlet(np.full(313, 0.1))
    expected = np.zeros(313)
    for j in range(313):
        for i in range(313):
            squared = ((centres[j] - centres[i]) ** 2).sum()
            expected[j] += distribution[i] * math.exp(-squared / (2 * 5.0 ** 2))
    expected /= expected.sum()
    got = color_bins.smooth_bin_distribution(distribution.astype(np.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


def test_expected_rebalancing_weight_under_the_smoothed_distribution_is_one():
    rng = np.random.default_rng(3)
    for concentration in (0.05, 1.0):
        smoothed = color_bins.smooth_bin_distribution(
            rng.dirichlet(np.full(313, concentration)).astype(np.float32)).numpy()
        weights = color_bins.rebalancing_weights(smoothed).numpy()
        assert float((smoothed * weights).sum()) == pytest.approx(1.0, abs=1e-5)
        # Rare colours weigh more: the weights fall as the probability rises.
        order = np.argsort(smoothed)
        assert (np.diff(weights[order]) <= 1e-6).all()


def test_rebalancing_weights_of_a_hand_worked_two_bin_case():
    """p̃ = (0.8, 0.2), λ = 0.5, Q = 2: w ∝ (1/0.65, 1/0.35) = (20/13, 20/7), and
    Σ p̃·w = 16/13 + 4/7 = 164/91, so w = (35/41, 65/41)."""
    weights = color_bins.rebalancing_weights(np.array([0.8, 0.2], np.float32), 0.5).numpy()
    np.testing.assert_allclose(weights, [35 / 41, 65 / 41], rtol=1e-6)
    # λ = 1 is no rebalancing; λ = 0 weighs each bin by 1 / p̃ (then rescaled).
    np.testing.assert_allclose(
        color_bins.rebalancing_weights(np.array([0.8, 0.2], np.float32), 1.0).numpy(), [1, 1])
    np.testing.assert_allclose(
        color_bins.rebalancing_weights(np.array([0.8, 0.2], np.float32), 0.0).numpy(),
        [0.625, 2.5], rtol=1e-6)


def numpy_annealed_mean(z: np.ndarray, centres: np.ndarray, temperature: float) -> np.ndarray:
    annealed = np.exp(np.log(z) / temperature)
    annealed /= annealed.sum(axis=-1, keepdims=True)
    return annealed @ centres


def test_annealed_mean_is_the_mean_at_t1_and_tends_to_the_mode():
    rng = np.random.default_rng(4)
    centres = color_bins.ab_bin_centres()
    z = rng.dirichlet(np.full(313, 0.3), size=6).astype(np.float32)
    mean = color_bins.annealed_mean(z, centres, 1.0).numpy()
    np.testing.assert_allclose(mean, z.astype(np.float64) @ centres, atol=1e-3)
    for temperature in (0.38, 0.1):
        np.testing.assert_allclose(color_bins.annealed_mean(z, centres, temperature).numpy(),
                                   numpy_annealed_mean(z.astype(np.float64), centres,
                                                       temperature), atol=1e-3)
    mode = centres[np.argmax(z, axis=-1)]
    near_zero = color_bins.annealed_mean(z, centres, 0.002).numpy()
    np.testing.assert_allclose(near_zero, mode, atol=0.05)
    # From logits: the same as from the softmax probabilities.
    logits = rng.normal(size=(3, 313)).astype(np.float32)
    probabilities = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(
        color_bins.annealed_mean_from_logits(logits, centres, 0.38).numpy(),
        numpy_annealed_mean(probabilities.astype(np.float64), centres, 0.38), atol=1e-3)


def test_grayscale_mask_keeps_only_images_with_chroma_above_5():
    ab = np.zeros((4, 3, 3, 2), np.float32)
    ab[1] = 4.9                 # faintly tinted everywhere: still grayscale
    ab[2, 2, 1, 0] = -5.5       # one coloured pixel is enough
    ab[3, 0, 0, 1] = 30.0
    np.testing.assert_array_equal(color_bins.grayscale_mask(ab).numpy(), [0, 0, 1, 1])


def test_lightness_quantisation_into_50_bins_of_width_2():
    lightness = np.array([0.0, 1.99, 2.0, 51.0, 99.9, 100.0], np.float32)
    np.testing.assert_array_equal(color_bins.quantize_lightness(lightness).numpy(),
                                  [0, 0, 1, 25, 49, 49])
    centres = color_bins.lightness_bin_centres()
    assert centres.shape == (50,) and centres[0] == 1.0 and centres[-1] == 99.0
