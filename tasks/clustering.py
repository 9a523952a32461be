"""DeepCluster's clustering step: PCA-whitening, L2 normalisation, k-means, uniform sampling, NMI.

Caron, Bojanowski, Joulin & Douze, "Deep Clustering for Unsupervised Learning of Visual
Features", ECCV 2018, §3.2 and §4: the features of every epoch are reduced to 256 dimensions by
PCA with whitening, L2-normalised and clustered by k-means; training samples images uniformly
over the clusters; the NMI between consecutive epochs' assignments tracks stability.

Everything runs in numpy / scikit-learn on the host, once per epoch, outside any replica step
(so every replica trains on the same assignments):

- PCA: ``sklearn.decomposition.PCA(whiten=True)`` (exact SVD for our sizes, deterministic).
  Whitening scales each component to unit variance, so components with (near) zero variance —
  e.g. dead ReLU channels of a freshly initialised network — would be rounding noise blown up
  to the weight of real ones; :func:`pca_whiten` keeps only components whose variance exceeds
  ``VARIANCE_FLOOR`` times the largest one.
- k-means: ``sklearn.cluster.KMeans`` (full-batch Lloyd, k-means++ seeding, one run of at most
  ``KMEANS_ITERATIONS`` iterations). Not ``MiniBatchKMeans``: the clustered subsets here are
  tens of thousands of points of ≤ 256 dimensions, where an exact Lloyd iteration costs
  milliseconds, and mini-batch noise in the centroids would show up as spurious changes between
  epochs — exactly what the NMI between epochs is meant to measure. The official code uses faiss
  (random init, 20 iterations); scikit-learn keeps empty clusters from forming by relocating
  centroids, much as faiss splits large clusters.
- NMI: ``sklearn.metrics.normalized_mutual_info_score`` with ``average_method="geometric"``,
  i.e. I(A; B) / sqrt(H(A) H(B)), the paper's definition (scikit-learn's default divides by
  the arithmetic mean of the entropies instead).
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score

PCA_DIM = 256  # Caron et al. 2018, §4: features PCA-reduced to 256 dimensions and whitened
KMEANS_ITERATIONS = 20  # official DeepCluster code (faiss ``niter = 20``)
# Components with less variance than this fraction of the largest are noise, not signal.
VARIANCE_FLOOR = 1e-6


def effective_pca_dim(pca_dim: int, num_features: int, num_examples: int) -> int:
    """The PCA output size actually used: ``pca_dim`` clamped to what the data can give.

    PCA cannot return more components than ``min(num_features, num_examples)``; on Fashion-MNIST
    with ``resnet_small`` (64 pooled features) the paper's 256 becomes 64, i.e. whitening without
    reduction.
    """
    return max(1, min(pca_dim, num_features, num_examples))


def pca_whiten(features: np.ndarray, pca_dim: int, seed: int = 0) -> np.ndarray:
    """``[n, d]`` features → ``[n, k]`` PCA-projected, whitened (unit-variance) components.

    ``k`` is :func:`effective_pca_dim` less the components whose variance falls below
    ``VARIANCE_FLOOR`` times the largest (at least one is kept; all-constant features give
    zeros).
    """
    features = np.asarray(features, dtype=np.float64)
    num_examples, num_features = features.shape
    dim = effective_pca_dim(pca_dim, num_features, num_examples)
    pca = PCA(n_components=dim, whiten=True, random_state=seed)
    whitened = pca.fit_transform(features)
    variances = pca.explained_variance_
    if variances[0] <= 0:
        return np.zeros((num_examples, 1))
    return whitened[:, variances > VARIANCE_FLOOR * variances[0]]


def l2_normalize(points: np.ndarray, epsilon: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    return points / np.maximum(norms, epsilon)


def kmeans_assignments(points: np.ndarray, num_clusters: int, seed: int = 0,
                       max_iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """k-means cluster id (int64, in ``[0, num_clusters)``) of every row of ``points``."""
    kmeans = KMeans(n_clusters=num_clusters, init="k-means++", n_init=1,
                    max_iter=max_iterations, random_state=seed)
    return kmeans.fit_predict(np.asarray(points, dtype=np.float64)).astype(np.int64)


def cluster_features(features: np.ndarray, num_clusters: int, pca_dim: int = PCA_DIM,
                     seed: int = 0, max_iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """DeepCluster's pipeline: PCA-whiten, L2-normalise, k-means → one cluster id per row."""
    points = l2_normalize(pca_whiten(features, pca_dim, seed))
    return kmeans_assignments(points, num_clusters, seed, max_iterations)


def uniform_over_clusters(assignments: np.ndarray, num_samples: int,
                          rng: np.random.Generator) -> np.ndarray:
    """``num_samples`` example indices drawn equally from every non-empty cluster, shuffled.

    DeepCluster's sampler (Caron et al. 2018, §3.3: images are sampled uniformly over the
    pseudo-labels so big clusters cannot dominate): each non-empty cluster gets
    ``num_samples // k`` draws, and a random ``num_samples % k`` of them one more, so counts
    differ by at most one. A cluster with at least its quota of members is drawn without
    replacement, a smaller one with replacement. Vectorised: no loop over clusters or examples.
    """
    assignments = np.asarray(assignments)
    clusters, sizes = np.unique(assignments, return_counts=True)
    num_clusters = len(clusters)
    quota = np.full(num_clusters, num_samples // num_clusters)
    quota[rng.permutation(num_clusters)[: num_samples % num_clusters]] += 1
    # Members grouped by cluster (in np.unique's order), in random order within each cluster.
    members = np.lexsort((rng.random(len(assignments)), assignments))
    first_member = np.cumsum(sizes) - sizes
    slot_cluster = np.repeat(np.arange(num_clusters), quota)
    slot_rank = np.arange(num_samples) - np.repeat(np.cumsum(quota) - quota, quota)
    slot_size = sizes[slot_cluster]
    with_replacement = (rng.random(num_samples) * slot_size).astype(np.int64)
    offset = np.where(quota[slot_cluster] <= slot_size, slot_rank, with_replacement)
    return rng.permutation(members[first_member[slot_cluster] + offset])


def nmi(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Normalised mutual information I(A; B) / sqrt(H(A) H(B)) of two labelings (Caron 2018)."""
    return float(normalized_mutual_info_score(labels_a, labels_b, average_method="geometric"))
