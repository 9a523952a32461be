"""The survey's Table 9 protocol for point-cloud encoders: a linear SVM on frozen features.

After self-supervised training, the encoder's features of labelled shapes train a linear SVM
and its test accuracy measures them (survey §7.3, Table 9; Achlioptas et al. 2018 and FoldingNet
probe their 128-D / 512-D bottlenecks this way on ModelNet40). Features: the ``pool``
endpoint, and each per-point endpoint max-pooled over the points (the encoder's own symmetric
function), so every layer can be compared. The SVM is :func:`selfsup.tasks.svm_probe.svm_probe`
(L2-normalised features, cost by stratified cross-validation, then refitted).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from selfsup.datasets.point_clouds import PointCloudSource
from selfsup.models import FEATURE_ENDPOINT
from selfsup.tasks.svm_probe import DEFAULT_COSTS, SvmResult, svm_probe

FEATURE_BATCH = 64


def point_features(encoder: keras.Model, points: np.ndarray,
                   endpoints: Sequence[str] = (FEATURE_ENDPOINT,),
                   batch_size: int = FEATURE_BATCH) -> dict[str, np.ndarray]:
    """Endpoint → float32 ``[count, channels]`` features of ``points`` ``[count, n, 3]``
    (inference mode; per-point endpoints max-pooled over the points)."""
    # One trace for every batch size (the last batch is smaller).
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def extract(batch):
        outputs = encoder(batch, training=False)
        return {name: (outputs[name] if len(outputs[name].shape) == 2
                       else tf.reduce_max(outputs[name], axis=1)) for name in endpoints}

    parts: dict[str, list[np.ndarray]] = {name: [] for name in endpoints}
    for start in range(0, len(points), batch_size):
        for name, value in extract(tf.constant(points[start:start + batch_size])).items():
            parts[name].append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def point_svm_probe(encoder: keras.Model, source: PointCloudSource, *, num_points: int,
                    train_examples: int | None, test_examples: int | None,
                    endpoints: Sequence[str] = (FEATURE_ENDPOINT,),
                    costs: Sequence[float] = DEFAULT_COSTS, seed: int = 0
                    ) -> dict[str, SvmResult]:
    """Endpoint → linear-SVM result on ``source``'s ``train`` / ``test`` shapes (counts: None
    takes a whole finite split)."""
    train_points, train_labels = source.examples("train", train_examples, num_points, seed)
    test_points, test_labels = source.examples("test", test_examples, num_points, seed)
    train = point_features(encoder, train_points, endpoints)
    test = point_features(encoder, test_points, endpoints)
    return {name: svm_probe(train[name], train_labels, test[name], test_labels, costs=costs,
                            seed=seed)
            for name in endpoints}
