"""sRGB ↔ CIE L*a*b* in TensorFlow ops (batched, any leading shape, float32).

Formulas:
  * sRGB transfer function and primaries: IEC 61966-2-1:1999. Decoding is
    ``c / 12.92`` for ``c ≤ 0.04045`` else ``((c + 0.055) / 1.055) ** 2.4``; encoding is its
    inverse with the break at ``0.0031308``.
  * Linear RGB → XYZ: the matrix whose columns are the sRGB primaries R (0.64, 0.33),
    G (0.30, 0.60), B (0.15, 0.06) in XYZ, scaled so RGB white maps to the D65 white point
    (x, y) = (0.3127, 0.3290) with Y = 1 (the standard RGB-to-XYZ derivation). It is computed
    here from those chromaticities rather than copied at 4 digits, so RGB white maps exactly to
    the reference white and every gray has a* = b* = 0.
  * XYZ → L*a*b*: CIE 15:2004 (CIE 1976 L*a*b*): ``L = 116 f(Y/Yn) − 16``,
    ``a = 500 (f(X/Xn) − f(Y/Yn))``, ``b = 200 (f(Y/Yn) − f(Z/Zn))`` with
    ``f(t) = t^(1/3)`` for ``t > (6/29)³`` else ``t / (3 (6/29)²) + 4/29``; (Xn, Yn, Zn) is the
    D65 white above (0.95046, 1, 1.08906).

Known values this reproduces (tests/test_color.py): white → (100, 0, 0); pure red →
(53.24, 80.09, 67.20); green → (87.73, −86.18, 83.18); blue → (32.30, 79.19, −107.86).
L* lies in [0, 100]; over the sRGB gamut a* ∈ [−86.2, 98.2] and b* ∈ [−107.9, 94.5].
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# IEC 61966-2-1 primaries and D65 white as CIE xy chromaticities.
SRGB_PRIMARIES_XY = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
D65_WHITE_XY = (0.3127, 0.3290)
# IEC 61966-2-1 transfer-function constants.
_SRGB_DECODE_BREAK = 0.04045
_SRGB_ENCODE_BREAK = 0.0031308
_SRGB_LINEAR_SLOPE = 12.92
_SRGB_GAMMA = 2.4
_SRGB_OFFSET = 0.055
# CIE 15:2004: δ = 6/29 separates the cube-root and linear parts of f.
_DELTA = 6.0 / 29.0


def _xy_to_xyz(x: float, y: float) -> np.ndarray:
    """Chromaticity (x, y) → XYZ with Y = 1."""
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


def _rgb_to_xyz_matrix() -> tuple[np.ndarray, np.ndarray]:
    primaries = np.stack([_xy_to_xyz(*xy) for xy in SRGB_PRIMARIES_XY], axis=1)
    white = _xy_to_xyz(*D65_WHITE_XY)
    # Scale each primary so that R = G = B = 1 lands on the white point.
    scales = np.linalg.solve(primaries, white)
    return primaries * scales, white


RGB_TO_XYZ, D65_WHITE_XYZ = _rgb_to_xyz_matrix()
XYZ_TO_RGB = np.linalg.inv(RGB_TO_XYZ)


def srgb_to_linear(rgb: tf.Tensor) -> tf.Tensor:
    """Gamma-encoded sRGB in [0, 1] → linear RGB (IEC 61966-2-1)."""
    rgb = tf.convert_to_tensor(rgb, tf.float32)
    # maximum() keeps pow's argument positive in the unused branch (no NaN gradients).
    curve = tf.pow(tf.maximum(rgb + _SRGB_OFFSET, 1e-6) / (1.0 + _SRGB_OFFSET), _SRGB_GAMMA)
    return tf.where(rgb <= _SRGB_DECODE_BREAK, rgb / _SRGB_LINEAR_SLOPE, curve)


def linear_to_srgb(linear: tf.Tensor) -> tf.Tensor:
    """Linear RGB → gamma-encoded sRGB (IEC 61966-2-1); values outside [0, 1] are not clipped."""
    linear = tf.convert_to_tensor(linear, tf.float32)
    curve = (1.0 + _SRGB_OFFSET) * tf.pow(tf.maximum(linear, _SRGB_ENCODE_BREAK),
                                          1.0 / _SRGB_GAMMA) - _SRGB_OFFSET
    return tf.where(linear <= _SRGB_ENCODE_BREAK, linear * _SRGB_LINEAR_SLOPE, curve)


def _lab_f(t: tf.Tensor) -> tf.Tensor:
    cube_root = tf.pow(tf.maximum(t, _DELTA ** 3), 1.0 / 3.0)
    return tf.where(t > _DELTA ** 3, cube_root, t / (3.0 * _DELTA ** 2) + 4.0 / 29.0)


def _lab_f_inverse(u: tf.Tensor) -> tf.Tensor:
    return tf.where(u > _DELTA, tf.pow(u, 3.0), 3.0 * _DELTA ** 2 * (u - 4.0 / 29.0))


def _apply_matrix(matrix: np.ndarray, values: tf.Tensor) -> tf.Tensor:
    """``matrix @ v`` for every 3-vector ``v`` on the last axis of ``values``."""
    return tf.einsum("ij,...j->...i", tf.constant(matrix, tf.float32), values)


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB ``[..., 3]`` in [0, 1] → CIE L*a*b* ``[..., 3]`` (L* in [0, 100]), D65 white."""
    rgb = tf.convert_to_tensor(rgb, tf.float32)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_lab needs 3 channels on the last axis, got shape {rgb.shape}")
    xyz = _apply_matrix(RGB_TO_XYZ, srgb_to_linear(rgb))
    fx, fy, fz = tf.unstack(_lab_f(xyz / tf.constant(D65_WHITE_XYZ, tf.float32)), axis=-1)
    return tf.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def rgb_to_lightness(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB ``[..., 3]`` in [0, 1] → CIE L* ``[..., 1]`` in [0, 100]: :func:`rgb_to_lab`'s L*.

    L* depends on the relative luminance Y alone (``L = 116 f(Y / Yn) − 16``, Yn = 1), so only
    the Y row of the RGB → XYZ matrix and one ``f`` are computed: about 5× cheaper than the full
    conversion, which matters where it runs inside every training step (colorization's encoder).
    """
    rgb = tf.convert_to_tensor(rgb, tf.float32)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_lightness needs 3 channels on the last axis, got shape "
                         f"{rgb.shape}")
    luminance_weights = tf.constant(RGB_TO_XYZ[1], tf.float32)
    luminance = tf.reduce_sum(srgb_to_linear(rgb) * luminance_weights, axis=-1, keepdims=True)
    return 116.0 * _lab_f(luminance) - 16.0


def lab_to_rgb(lab: tf.Tensor, clip: bool = True) -> tf.Tensor:
    """CIE L*a*b* ``[..., 3]`` → sRGB ``[..., 3]``; ``clip`` limits out-of-gamut colours to [0, 1].

    The exact inverse of :func:`rgb_to_lab` on the sRGB gamut; Lab colours outside it (e.g. a
    predicted ab with the wrong L) give RGB outside [0, 1], which ``clip=False`` keeps.
    """
    lab = tf.convert_to_tensor(lab, tf.float32)
    if lab.shape[-1] != 3:
        raise ValueError(f"lab_to_rgb needs 3 channels on the last axis, got shape {lab.shape}")
    lightness, a, b = tf.unstack(lab, axis=-1)
    fy = (lightness + 16.0) / 116.0
    f_xyz = tf.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
    xyz = _lab_f_inverse(f_xyz) * tf.constant(D65_WHITE_XYZ, tf.float32)
    rgb = linear_to_srgb(_apply_matrix(XYZ_TO_RGB, xyz))
    return tf.clip_by_value(rgb, 0.0, 1.0) if clip else rgb
