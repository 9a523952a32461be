"""18-layer 3D ResNets for video (Tran et al. 2018, "A Closer Look at Spatiotemporal Convolutions
for Action Recognition"; Hara et al. 2018, "Can Spatiotemporal 3D CNNs Retrace the History of 2D
CNNs and ImageNet?").

Variants (the layouts of Tran et al. Table 1 and of torchvision's ``r3d_18``/``mc3_18``/
``r2plus1d_18``), each with endpoints ``stem``, ``res2`` … ``res5`` and ``pool``:
  * ``r3d_18``: full 3×3×3 convolutions everywhere. Stem: 3×7×7 conv, stride (1, 2, 2), 64
    channels, BN, ReLU, no max-pool. Four stages of 2 basic blocks, 64/128/256/512 channels;
    the first block of stages 2–4 strides 2 in t, h and w, with a 1×1×1 conv + BN projection
    shortcut. 33,371,472 parameters with a 400-way Kinetics classifier (torchvision's figure).
  * ``mc3_18``: mixed convolutions, MC3 of the paper: the stem and stage ``res2`` are 3D,
    stages ``res3`` … ``res5`` use 1×3×3 (frame-wise 2D) convolutions and so stride only in
    space (as torchvision; their projection shortcuts stride (1, 2, 2)): the temporal length
    stays that of the input. 11,695,440 parameters with the 400-way classifier (torchvision).
  * ``r2plus1d_18``: every 3×3×3 convolution factorised into 1×3×3 → BN → ReLU → 3×1×1 (§3.5).
    Stem: 1×7×7 conv to 45 channels, stride (1, 2, 2), BN, ReLU, 3×1×1 conv to 64, BN, ReLU.
    The mid width ``M = ⌊t·d²·N_in·N_out / (d²·N_in + t·N_out)⌋``
    (:func:`~selfsup.models.video_blocks.mid_channels_2plus1d`) is taken, by default
    (``mid_channels="block"``), from the *block's* input and output widths for both of its
    convolutions, as torchvision does: 31,505,325 parameters with the 400-way classifier,
    torchvision's published figure. ``mid_channels="conv"`` applies the formula to each
    convolution's own widths, the paper's stated rule ("approximately equal" to the 3D
    network): 33,370,839 parameters with the classifier against R3D-18's 33,371,472. The two
    rules only differ in the second convolution of the first block of stages 3–5 (e.g. its
    128 → 128 gets M = 230 from the block's 64 → 128, not 288).

Parameter counts follow PyTorch's ``numel`` over ``parameters()``: BatchNorm's scale and offset
only (its moving mean and variance are buffers there, non-trainable variables here), so they
compare with ``trainable`` counts (see tests/test_video_backbones.py for the arithmetic).

Choices:
  * Input [0, 1] RGB is mapped to [-1, 1] (the other backbones' convention), not Kinetics
    mean/std.
  * TF "same" padding everywhere, so a clip of T frames has ``ceil(T / 2^k)`` frames after k
    temporal strides and any clip length ≥ 1 and frame side ≥ 1 works (8 frames of 32 px at
    the small stem give 8/8/4/2/1 frames and 32/32/16/8/4 px at ``stem``/``res2``…``res5``).
  * ``stem="small"`` (``"auto"`` picks it for frames up to 64 px) keeps the stem's layers and
    only drops its spatial stride to 1, so checkpoints move between stems unchanged.
  * ``width_multiplier`` scales every width including the stem's 45/64 (rounded, at least 1);
    (2+1)D mid widths are computed from the scaled widths, so the 3D match holds at any width.
"""

from __future__ import annotations

from functools import partial

import keras

from selfsup.models.backbone import FEATURE_ENDPOINT, make_batch_norm, resolve_stem
from selfsup.models.video_backbone import VideoBackbone, register_video_backbone
from selfsup.models.video_blocks import (
    CONV_KINDS,
    VideoBasicBlock,
    conv3d,
    mid_channels_2plus1d,
)

STEM_KINDS = ("3d", "2plus1d")
MID_CHANNEL_RULES = ("block", "conv")
# Tran et al. 2018 §3.5 / torchvision's R2Plus1dStem: the (2+1)D stem's 1×7×7 conv has 45 outputs.
R2PLUS1D_STEM_MID_WIDTH = 45


def _scaled(width: int, multiplier: float) -> int:
    return max(1, round(width * multiplier))


class VideoResNet(VideoBackbone):
    """A 3D/mixed/(2+1)D ResNet (Tran et al. 2018) returning named endpoints (module docstring).

    ``stage_convs`` gives each stage's convolution kind (``"3d"``, ``"2d"``, ``"2plus1d"``),
    ``stem_kind`` the stem (``"3d"``: 3×7×7; ``"2plus1d"``: 1×7×7 then 3×1×1), ``mid_channels``
    the (2+1)D mid-width rule (``"block"``: torchvision's; ``"conv"``: per convolution).
    """

    def __init__(
        self,
        stage_blocks: tuple[int, ...] = (2, 2, 2, 2),
        stage_widths: tuple[int, ...] = (64, 128, 256, 512),
        stage_convs: tuple[str, ...] = ("3d", "3d", "3d", "3d"),
        stem_kind: str = "3d",
        stem_width: int = 64,
        mid_channels: str = "block",
        stem: str = "auto",
        input_size: int | None = None,
        width_multiplier: float = 1.0,
        synchronized_bn: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not len(stage_blocks) == len(stage_widths) == len(stage_convs):
            raise ValueError("stage_blocks, stage_widths and stage_convs must have one entry "
                             "per stage")
        for kind in stage_convs:
            if kind not in CONV_KINDS:
                raise ValueError(f"stage_convs entries must be one of {', '.join(CONV_KINDS)}, "
                                 f"got {kind!r}")
        if stem_kind not in STEM_KINDS:
            raise ValueError(f"stem_kind must be one of {', '.join(STEM_KINDS)}, got {stem_kind!r}")
        if mid_channels not in MID_CHANNEL_RULES:
            raise ValueError(f"mid_channels must be one of {', '.join(MID_CHANNEL_RULES)}, got "
                             f"{mid_channels!r}")
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
        stem = resolve_stem(stem, input_size)
        self._config = dict(
            stage_blocks=tuple(stage_blocks), stage_widths=tuple(stage_widths),
            stage_convs=tuple(stage_convs), stem_kind=stem_kind, stem_width=stem_width,
            mid_channels=mid_channels, stem=stem, input_size=input_size,
            width_multiplier=width_multiplier, synchronized_bn=synchronized_bn,
        )
        widths = [_scaled(w, width_multiplier) for w in stage_widths]
        stem_channels = _scaled(stem_width, width_multiplier)
        spatial_stride = 2 if stem == "imagenet" else 1

        # Maps [0, 1] RGB to [-1, 1], the input convention of every backbone here.
        self.rescale = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")
        if stem_kind == "3d":
            self.stem_conv = conv3d(stem_channels, (3, 7, 7), (1, spatial_stride, spatial_stride),
                                    name="stem_conv")
            self.stem_bn = make_batch_norm(synchronized_bn, name="stem_bn")
            self.stem_temporal_conv = self.stem_temporal_bn = None
        else:
            stem_mid = _scaled(R2PLUS1D_STEM_MID_WIDTH, width_multiplier)
            self.stem_conv = conv3d(stem_mid, (1, 7, 7), (1, spatial_stride, spatial_stride),
                                    name="stem_conv")
            self.stem_bn = make_batch_norm(synchronized_bn, name="stem_bn")
            self.stem_temporal_conv = conv3d(stem_channels, (3, 1, 1), 1,
                                             name="stem_temporal_conv")
            self.stem_temporal_bn = make_batch_norm(synchronized_bn, name="stem_temporal_bn")

        self.stages: list[list[VideoBasicBlock]] = []
        self.endpoint_names = ["stem"]
        in_channels = stem_channels
        for index, (num_blocks, width, kind) in enumerate(
                zip(stage_blocks, widths, stage_convs, strict=True)):
            stage = []
            for b in range(num_blocks):
                stride = 2 if (b == 0 and index > 0) else 1
                mids = None
                if kind == "2plus1d":
                    first = mid_channels_2plus1d(in_channels, width)
                    second = first if mid_channels == "block" else mid_channels_2plus1d(width,
                                                                                       width)
                    mids = (first, second)
                stage.append(VideoBasicBlock(
                    width, kind, stride, project=(stride != 1 or in_channels != width),
                    mid_channels=mids, synchronized_bn=synchronized_bn,
                    name=f"res{index + 2}_block{b + 1}"))
                in_channels = width
            self.stages.append(stage)
            self.endpoint_names.append(f"res{index + 2}")
        self.endpoint_names.append(FEATURE_ENDPOINT)
        self.pool = keras.layers.GlobalAveragePooling3D(name=FEATURE_ENDPOINT)
        self.num_features = in_channels

    def build(self, input_shape) -> None:
        """Builds every layer from shapes (no symbolic trace; see models/video_blocks.py)."""
        self.stem_conv.build(input_shape)
        shape = self.stem_conv.compute_output_shape(input_shape)
        self.stem_bn.build(shape)
        if self.stem_temporal_conv is not None:
            self.stem_temporal_conv.build(shape)
            shape = self.stem_temporal_conv.compute_output_shape(shape)
            self.stem_temporal_bn.build(shape)
        for stage in self.stages:
            for block in stage:
                block.build(shape)
                shape = block.compute_output_shape(shape)

    def call(self, clips, training=None):
        endpoints = {}
        x = self.rescale(clips)
        x = keras.ops.relu(self.stem_bn(self.stem_conv(x), training=training))
        if self.stem_temporal_conv is not None:
            x = keras.ops.relu(self.stem_temporal_bn(self.stem_temporal_conv(x),
                                                     training=training))
        endpoints["stem"] = x
        for index, stage in enumerate(self.stages):
            for block in stage:
                x = block(x, training=training)
            endpoints[f"res{index + 2}"] = x
        endpoints[FEATURE_ENDPOINT] = self.pool(x)
        return endpoints


r3d_18 = partial(VideoResNet, stage_convs=("3d", "3d", "3d", "3d"), stem_kind="3d")
mc3_18 = partial(VideoResNet, stage_convs=("3d", "2d", "2d", "2d"), stem_kind="3d")
r2plus1d_18 = partial(VideoResNet, stage_convs=("2plus1d",) * 4, stem_kind="2plus1d")

register_video_backbone("r3d_18", r3d_18)
register_video_backbone("mc3_18", mc3_18)
register_video_backbone("r2plus1d_18", r2plus1d_18)
