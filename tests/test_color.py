"""sRGB ↔ CIE Lab: published reference colours, a scalar reference, both branches, round trip."""

import numpy as np
import pytest
import tensorflow as tf

from selfsup.datasets.color import lab_to_rgb, rgb_to_lab, rgb_to_lightness

# Lab of the sRGB primaries and white with the D65 white point, as tabulated by colour
# calculators (e.g. Lindbloom's) to two decimals.
KNOWN_LAB = {
    (1.0, 1.0, 1.0): (100.0, 0.0, 0.0),
    (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
    (1.0, 0.0, 0.0): (53.24, 80.09, 67.20),
    (0.0, 1.0, 0.0): (87.73, -86.18, 83.18),
    (0.0, 0.0, 1.0): (32.30, 79.19, -107.86),
}

# The IEC 61966-2-1 matrix as printed in the standard (4 digits), used by the scalar reference.
IEC_MATRIX = ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505))


def reference_lab(r: float, g: float, b: float) -> tuple[float, float, float]:
    """One colour by hand: sRGB decode, the printed matrix, CIE 1976 Lab (white = row sums)."""

    def decode(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    def f(t):
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    linear = [decode(r), decode(g), decode(b)]
    xyz = [sum(m * c for m, c in zip(row, linear, strict=True)) for row in IEC_MATRIX]
    white = [sum(row) for row in IEC_MATRIX]
    fx, fy, fz = (f(v / w) for v, w in zip(xyz, white, strict=True))
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def test_reference_colours_have_their_published_lab_values():
    rgb = np.array(list(KNOWN_LAB), np.float32)
    lab = rgb_to_lab(tf.constant(rgb)).numpy()
    np.testing.assert_allclose(lab, np.array(list(KNOWN_LAB.values())), atol=0.01)


def test_matches_a_scalar_reference_on_random_colours_including_dark_ones():
    rng = np.random.default_rng(0)
    # A third of the colours are dark enough for the linear segments of the sRGB decode
    # (c ≤ 0.04045) and of the Lab f (Y/Yn ≤ (6/29)³, i.e. L* ≤ 8).
    rgb = np.concatenate([rng.uniform(size=(40, 3)), rng.uniform(0, 0.04, size=(20, 3))])
    lab = rgb_to_lab(tf.constant(rgb, tf.float32)).numpy()
    expected = np.array([reference_lab(*colour) for colour in rgb])
    assert (expected[:, 0] < 8).sum() >= 20
    # The printed matrix has 4 digits, so the two agree to a few hundredths, not to float eps.
    np.testing.assert_allclose(lab, expected, atol=0.05)


def test_lightness_alone_has_the_published_and_scalar_reference_values():
    rgb = np.array(list(KNOWN_LAB), np.float32)
    lightness = rgb_to_lightness(tf.constant(rgb)).numpy()
    assert lightness.shape == (len(KNOWN_LAB), 1)
    np.testing.assert_allclose(lightness[:, 0], [lab[0] for lab in KNOWN_LAB.values()],
                               atol=0.01)
    rng = np.random.default_rng(1)
    rgb = np.concatenate([rng.uniform(size=(40, 3)), rng.uniform(0, 0.04, size=(20, 3))])
    expected = np.array([reference_lab(*colour)[0] for colour in rgb])
    lightness = rgb_to_lightness(tf.constant(rgb[None], tf.float32)).numpy()[0, :, 0]
    np.testing.assert_allclose(lightness, expected, atol=0.05)


def test_grays_have_no_chroma_and_lightness_of_their_luminance():
    grays = tf.linspace(0.0, 1.0, 11)
    lab = rgb_to_lab(tf.stack([grays] * 3, axis=-1)).numpy()
    np.testing.assert_allclose(lab[:, 1:], 0.0, atol=1e-4)
    # sRGB 0.5 decodes to luminance 0.21404 → L* = 116 · 0.21404^(1/3) − 16 = 53.39.
    assert lab[5, 0] == pytest.approx(116 * 0.214041 ** (1 / 3) - 16, abs=0.01)
    assert lab[5, 0] == pytest.approx(53.39, abs=0.01)
    assert np.all(np.diff(lab[:, 0]) > 0)


def test_lab_to_rgb_inverts_rgb_to_lab_on_images():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(2, 5, 7, 3)).astype(np.float32)
    images[0, 0, :3] = [[0, 0, 0], [1, 1, 1], [0.01, 0.02, 0.0]]  # black, white, dark
    lab = rgb_to_lab(tf.constant(images))
    assert lab.shape == images.shape
    np.testing.assert_allclose(lab_to_rgb(lab, clip=False).numpy(), images, atol=2e-5)


def test_out_of_gamut_lab_is_clipped_only_when_asked():
    # L* = 50 with a* = 120 is redder than sRGB red: red overflows, green goes negative.
    lab = tf.constant([[50.0, 120.0, 0.0]])
    unclipped = lab_to_rgb(lab, clip=False).numpy()[0]
    assert unclipped[0] > 1.0 and unclipped[1] < 0.0
    clipped = lab_to_rgb(lab).numpy()[0]
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0


def test_gradients_are_finite_at_black_and_white():
    rgb = tf.constant([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.04045, 0.5, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(rgb)
        lightness = rgb_to_lab(rgb)[:, 0]
    gradient = tape.gradient(lightness, rgb).numpy()
    assert np.all(np.isfinite(gradient))
    # Near black both curves are linear: L* = 116 / (3 δ²) · Y, Y = Σ_j M[1, j] · c_j / 12.92 and
    # the row M[1, :] sums to 1, so the gradient's entries sum to 116 / (3 δ² · 12.92).
    assert gradient[0].sum() == pytest.approx(116 / (3 * (6 / 29) ** 2 * 12.92), rel=1e-4)
