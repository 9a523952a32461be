"""CMC: contrast the L and ab views of an image, one encoder per view.

Tian, Krishnan & Isola, "Contrastive Multiview Coding", 2019. Each image is split into two
views in CIE Lab, the lightness L and the chroma ab, each with its own encoder (the paper's
ImageNet experiments). A linear projection of each view's pooled features to a 128-d unit
vector is scored against the other view's projections with temperature τ = 0.07 (the paper's
settings, after Wu et al. 2018's instance discrimination); the loss is the two-directional
contrastive loss L(V1, V2) = L_{V1}^{V2} + L_{V2}^{V1}.

Choices here:
  * Negatives are the other images of the global batch, gathered across replicas (the in-batch
    softmax form of the loss); the paper's memory bank with NCE / sampled negatives is not
    implemented.
  * The loss is the *mean* of the two directions (the paper sums them: a factor 2 on the
    learning rate), so equal scores give log(global batch), as for every InfoNCE here.
  * Width: for AlexNet the paper halves every layer of each view's encoder so the pair matches
    one network. ``width_multiplier=None`` does that (0.5) for backbones that have a
    ``width_multiplier`` (the ResNets) and keeps full width for the others.
  * Probe / export: the encoder (:class:`SplitColorEncoder`) takes RGB and returns both views'
    endpoints (``l_res2``, ``ab_res2``, ...) and ``pool`` = the two pooled vectors concatenated,
    the paper's evaluation feature (features of both views concatenated).
  * No augmentation beyond the view split (the paper adds random crops and flips).

Grayscale data: the ab view of a gray image is zero, so on Fashion-MNIST the ab encoder sees a
constant input and CMC has nothing to contrast: measured over 20 SGD steps at batch 32 the loss
sat at 3.469 against log 32 = 3.466. ``tint_gray_images`` multiplies each gray image by a
random saturated colour (``selfsup.datasets.tint``) so that the ab view carries the shape (a
stand-in for colour data, not part of the paper); with it, 300 steps at batch 128 lift the best
probed layer from 82.2 % (random init of the same half-width pair) to 84.7 % (the slow test in
tests/test_cmc.py).
"""

from __future__ import annotations

import dataclasses
import inspect

import keras
import tensorflow as tf

from selfsup.datasets.color import rgb_to_lab
from selfsup.datasets.tint import tint_gray_batches
from selfsup.models import BACKBONES, FEATURE_ENDPOINT, Backbone, build_backbone
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import BACKBONE_NAME, TASKS, Task, TaskConfig
from selfsup.tasks.info_nce import replica_info_nce

# Tian et al. 2019: τ and the dimension of each view's embedding.
CMC_TEMPERATURE = 0.07
CMC_EMBEDDING_DIM = 128
# Tian et al. 2019: each view's AlexNet has half the channels of a single network.
CMC_VIEW_WIDTH = 0.5
# Scale of the views before the encoders, which expect values in [0, 1] (they map them to
# [-1, 1]): L / 100, and ab / (2 · 110) + 0.5, since over the sRGB gamut |a|, |b| ≤ 107.9
# (see selfsup.datasets.color); 110 leaves a small margin.
AB_RANGE = 110.0
LIGHTNESS_RANGE = 100.0
VIEW_PREFIXES = ("l", "ab")


def split_lab_views(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """RGB ``[b, h, w, 3]`` in [0, 1] → (L ``[b, h, w, 1]``, ab ``[b, h, w, 2]``) in [0, 1]."""
    lab = rgb_to_lab(images)
    lightness = lab[..., :1] / LIGHTNESS_RANGE
    chroma = lab[..., 1:] / (2.0 * AB_RANGE) + 0.5
    return lightness, chroma


def supports_width_multiplier(backbone: str) -> bool:
    """Whether the registered backbone's builder takes a ``width_multiplier``."""
    return "width_multiplier" in inspect.signature(BACKBONES.get(backbone)).parameters


def check_view_width(backbone: str, backbone_kwargs: dict, width_multiplier: float | None
                     ) -> None:
    """Raises ConfigError unless ``width_multiplier`` (None: automatic) fits the backbone."""
    if width_multiplier is None:
        return
    if width_multiplier <= 0:
        raise ConfigError(f"width_multiplier must be positive, got {width_multiplier}")
    if "width_multiplier" in backbone_kwargs:
        raise ConfigError("width_multiplier is set twice (task parameter and backbone_kwargs)")
    if width_multiplier != 1.0 and not supports_width_multiplier(backbone):
        raise ConfigError(f"backbone {backbone!r} has no width_multiplier; "
                          "use width_multiplier=1.0")


def view_backbone_kwargs(backbone: str, backbone_kwargs: dict, width_multiplier: float | None
                         ) -> dict:
    """``backbone_kwargs`` plus each view network's width multiplier (None: 0.5 where the
    backbone has one, the paper's halved views, else full width)."""
    kwargs = dict(backbone_kwargs)
    if "width_multiplier" in kwargs:
        return kwargs
    width = width_multiplier
    if width is None:
        width = CMC_VIEW_WIDTH if supports_width_multiplier(backbone) else 1.0
    if width != 1.0:
        kwargs["width_multiplier"] = width
    return kwargs


class SplitColorEncoder(Backbone):
    """CMC's two-view encoder (Tian et al. 2019): RGB → Lab → an L and an ab backbone.

    Endpoints: every endpoint of the L backbone prefixed ``l_``, then of the ab backbone
    prefixed ``ab_``, then ``pool`` = ``concat(l_pool, ab_pool)``. The registry backbones infer
    their input channels, so L (1 channel) and ab (2 channels) enter them directly.
    """

    def __init__(self, backbone: str = "resnet_small", input_size: int | None = None,
                 synchronized_bn: bool = False, backbone_kwargs: dict | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        view_kwargs = dict(backbone_kwargs or {})
        self._config = dict(backbone=backbone, input_size=input_size,
                            synchronized_bn=synchronized_bn, backbone_kwargs=view_kwargs)
        self.l_net = build_backbone(backbone, input_size=input_size,
                                    synchronized_bn=synchronized_bn, name="l_net", **view_kwargs)
        self.ab_net = build_backbone(backbone, input_size=input_size,
                                     synchronized_bn=synchronized_bn, name="ab_net",
                                     **view_kwargs)

    def call(self, images, training=None):
        lightness, chroma = split_lab_views(images)
        endpoints = {}
        pooled = []
        for prefix, net, view in (("l", self.l_net, lightness), ("ab", self.ab_net, chroma)):
            outputs = net(view, training=training)
            endpoints.update({f"{prefix}_{name}": value for name, value in outputs.items()})
            pooled.append(outputs[FEATURE_ENDPOINT])
        endpoints[FEATURE_ENDPOINT] = keras.ops.concatenate(pooled, axis=-1)
        return endpoints


def cmc_loss(l_embedding: tf.Tensor, ab_embedding: tf.Tensor,
             temperature: float = CMC_TEMPERATURE) -> tf.Tensor:
    """Mean of InfoNCE L→ab and ab→L on unit-normalised embeddings ``[n, d]`` (paired rows).

    Candidates of each anchor are the other view's embeddings of the whole global batch.
    """
    l_unit = tf.math.l2_normalize(tf.cast(l_embedding, tf.float32), axis=-1)
    ab_unit = tf.math.l2_normalize(tf.cast(ab_embedding, tf.float32), axis=-1)
    l_to_ab = replica_info_nce(l_unit, ab_unit, temperature=temperature)
    ab_to_l = replica_info_nce(ab_unit, l_unit, temperature=temperature)
    return 0.5 * (l_to_ab + ab_to_l)


@dataclasses.dataclass(frozen=True)
class CMCConfig(TaskConfig):
    """CMC settings (defaults from Tian et al. 2019, see the module docstring)."""

    temperature: float = CMC_TEMPERATURE
    embedding_dim: int = CMC_EMBEDDING_DIM
    # None: 0.5 for backbones with a width multiplier (the paper's halved views), else 1.0.
    width_multiplier: float | None = None
    tint_gray_images: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.embedding_dim <= 0:
            raise ConfigError(f"embedding_dim must be positive, got {self.embedding_dim}")
        check_view_width(self.backbone, self.backbone_kwargs, self.width_multiplier)

    def view_backbone_kwargs(self) -> dict:
        """``backbone_kwargs`` plus each view's resolved width multiplier."""
        return view_backbone_kwargs(self.backbone, self.backbone_kwargs, self.width_multiplier)


class CMCModel(keras.Model):
    """The two-view encoder plus one linear projection per view (Tian et al. 2019)."""

    def __init__(self, backbone: SplitColorEncoder, embedding_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.projections = [keras.layers.Dense(embedding_dim, name=f"{prefix}_projection")
                            for prefix in VIEW_PREFIXES]

    def call(self, images, training=None):
        endpoints = dict(self.backbone(images, training=training))
        for prefix, projection in zip(VIEW_PREFIXES, self.projections, strict=True):
            endpoints[f"{prefix}_embedding"] = projection(
                endpoints[f"{prefix}_{FEATURE_ENDPOINT}"])
        return endpoints


class CMCTask(Task):
    """Contrastive Multiview Coding (Tian et al. 2019) on the L and ab views."""

    shares_backbone = False  # two view encoders of its own

    config_class = CMCConfig

    def build_backbone(self) -> SplitColorEncoder:
        config = self.config
        return SplitColorEncoder(config.backbone, input_size=config.image_size,
                                 synchronized_bn=config.synchronized_bn,
                                 backbone_kwargs=config.view_backbone_kwargs(),
                                 name=BACKBONE_NAME)

    def build_model(self) -> CMCModel:
        return CMCModel(self.build_backbone(), self.config.embedding_dim, name="cmc")

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        config = self.config
        images = self.training_images(input_context)
        if config.tint_gray_images:
            # Stateless seeds from the batch index: a resumed run (which skips batches)
            # sees the same tints.
            images = tint_gray_batches(images, config.seed, input_context)
        return images.prefetch(tf.data.AUTOTUNE)

    def build_losses(self, labels, outputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return cmc_loss(outputs["l_embedding"], outputs["ab_embedding"], self.config.temperature)

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss")]

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        """Label-free: the inputs are just the model's input."""
        outputs = model(inputs, training=training)
        return self.build_losses(None, outputs), None, outputs


TASKS.register("cmc", CMCTask)
