"""C3D (Tran et al. 2015, "Learning Spatiotemporal Features with 3D Convolutional Networks").

``c3d``: eight 3×3×3 convolutions (stride 1, ReLU) and five max-pools (§3.3, Fig. 3):

    conv1a 64   pool1 1×2×2 | conv2a 128  pool2 2×2×2 | conv3a, conv3b 256  pool3 2×2×2 |
    conv4a, conv4b 512  pool4 2×2×2 | conv5a, conv5b 512  pool5 2×2×2 | fc6 4096, fc7 4096

pool1 keeps time "to not merge the temporal signal too early" (§3.3). A 16×112×112 clip gives
16×56×56, 8×28×28, 4×14×14, 2×7×7 and 1×4×4 maps after pool1 … pool5 (pool5 pads 7 → 4 as the
released Caffe model does), so fc6 sees 1·4·4·512 = 8192 inputs. Parameters (weights + biases):

      conv1a  27·3·64    + 64   =      5,248
      conv2a  27·64·128  + 128  =    221,312
      conv3a  27·128·256 + 256  =    884,992
      conv3b  27·256·256 + 256  =  1,769,728
      conv4a  27·256·512 + 512  =  3,539,456
      conv4b  27·512·512 + 512  =  7,078,400   (conv5a, conv5b the same)
      convolutions                = 27,655,936   (``include_fc=False``, the default)
      fc6     8192·4096 + 4096    = 33,558,528
      fc7     4096·4096 + 4096    = 16,781,312
      with fc6 and fc7            = 77,995,776   (``include_fc=True``; the Sports-1M fc8,
                                                  4096·487 + 487, is a task head, not here)

Options and choices:
  * ``include_fc=False`` (default): self-supervised video papers (VCOP, Xu et al. 2019; and
    the clip-order, rotation and puzzle tasks after it) take C3D's conv features, globally
    average-pooled: ``"pool"`` is the 512-d average of pool5's output. With ``include_fc=True``
    the pool5 map is averaged over time and adaptively average-pooled to 4×4 (the identity at
    16×112×112, where pool5 is 1×4×4), flattened into fc6 → ReLU → fc7 → ReLU, with dropout 0.5
    on the inputs of fc6 and fc7 (the released Caffe model's rate, as in AlexNet), and
    ``"pool"`` is fc7's activation.
  * ``batch_norm=True``: BatchNorm after every convolution (and after fc6/fc7), bias-free
    layers before it. This is the C3D of the self-supervised literature (VCOP's C3D has
    BatchNorm after every convolution; it keeps a redundant conv bias, which adds 2,752
    parameters (the sum of the conv widths) and changes nothing the BN offset cannot do). The
    original network has no normalisation.
  * "same" padding for every convolution and pool, so short clips never collapse: a pool of
    a 1-frame map keeps one frame (8 frames of 32 px give 8×16×16, 4×8×8, 2×4×4, 1×2×2, 1×1×1).
  * Endpoints ``conv1`` … ``conv5`` are each block's output *after* its pooling (pool1 …
    pool5, i.e. the resolution the next block sees, like the ResNets' stage endpoints), then
    ``fc6``, ``fc7`` when ``include_fc``, then ``pool``.
  * ``width_multiplier`` scales every conv and fc width (rounded, at least 1). Input [0, 1] RGB
    is mapped to [-1, 1] (the other backbones' convention, not Sports-1M mean subtraction);
    He-normal initialisation.
"""

from __future__ import annotations

from functools import partial

import keras

from selfsup.models.backbone import FEATURE_ENDPOINT, make_batch_norm
from selfsup.models.blocks import AdaptiveAveragePooling2D, maybe_dropout
from selfsup.models.video_backbone import VideoBackbone, register_video_backbone
from selfsup.models.video_blocks import conv3d

# Tran et al. 2015 §3.3 / Fig. 3: conv widths per block and the (t, h, w) window of its pool.
BLOCK_WIDTHS = ((64,), (128,), (256, 256), (512, 512), (512, 512))
BLOCK_POOLS = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
FC_WIDTH = 4096
FC_INPUT_GRID = 4  # pool5 of a 16×112×112 clip is 1×4×4
DROPOUT_RATE = 0.5


class C3D(VideoBackbone):
    """C3D (Tran et al. 2015) returning named endpoints (see the module docstring)."""

    def __init__(
        self,
        include_fc: bool = False,
        batch_norm: bool = False,
        dropout: float = DROPOUT_RATE,
        input_size: int | None = None,
        width_multiplier: float = 1.0,
        synchronized_bn: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self._config = dict(
            include_fc=include_fc, batch_norm=batch_norm, dropout=dropout,
            input_size=input_size, width_multiplier=width_multiplier,
            synchronized_bn=synchronized_bn,
        )

        def scaled(width: int) -> int:
            return max(1, round(width * width_multiplier))

        self.rescale = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")
        self.blocks: list[list[tuple[keras.layers.Layer, keras.layers.Layer | None]]] = []
        self.pools: list[keras.layers.MaxPooling3D] = []
        letters = "ab"
        for index, (widths, window) in enumerate(zip(BLOCK_WIDTHS, BLOCK_POOLS, strict=True)):
            block = []
            for position, width in enumerate(widths):
                name = f"conv{index + 1}{letters[position]}"
                block.append((
                    conv3d(scaled(width), 3, 1, name=name, use_bias=not batch_norm),
                    make_batch_norm(synchronized_bn, name=f"{name}_bn") if batch_norm else None))
            self.blocks.append(block)
            self.pools.append(keras.layers.MaxPooling3D(window, strides=window, padding="same",
                                                        name=f"pool{index + 1}"))
        self.endpoint_names = [f"conv{i + 1}" for i in range(len(BLOCK_WIDTHS))]
        self.dropout_rate = dropout
        self.fcs: list[tuple[keras.layers.Dense, keras.layers.Layer | None]] = []
        self.grid_pool = self.flatten = self.average = None
        if include_fc:
            self.grid_pool = AdaptiveAveragePooling2D(FC_INPUT_GRID, name="grid_pool")
            self.flatten = keras.layers.Flatten(name="flatten")
            for name in ("fc6", "fc7"):
                self.fcs.append((
                    keras.layers.Dense(scaled(FC_WIDTH), use_bias=not batch_norm,
                                       kernel_initializer="he_normal", name=name),
                    make_batch_norm(synchronized_bn, name=f"{name}_bn") if batch_norm else None))
            self.endpoint_names += ["fc6", "fc7"]
            self.num_features = scaled(FC_WIDTH)
        else:
            self.average = keras.layers.GlobalAveragePooling3D(name=FEATURE_ENDPOINT)
            self.num_features = scaled(BLOCK_WIDTHS[-1][-1])
        self.endpoint_names.append(FEATURE_ENDPOINT)

    def build(self, input_shape) -> None:
        """Builds every layer from shapes (no symbolic trace; see models/video_blocks.py)."""
        shape = input_shape
        for block, pool in zip(self.blocks, self.pools, strict=True):
            for conv, norm in block:
                conv.build(shape)
                shape = conv.compute_output_shape(shape)
                if norm is not None:
                    norm.build(shape)
            shape = pool.compute_output_shape(shape)
        features = FC_INPUT_GRID * FC_INPUT_GRID * shape[-1]
        for fc, norm in self.fcs:
            fc.build((None, features))
            features = fc.units
            if norm is not None:
                norm.build((None, features))

    def call(self, clips, training=None):
        endpoints = {}
        x = self.rescale(clips)
        for index, (block, pool) in enumerate(zip(self.blocks, self.pools, strict=True)):
            for conv, norm in block:
                x = conv(x)
                if norm is not None:
                    x = norm(x, training=training)
                x = keras.ops.relu(x)
            x = pool(x)
            endpoints[f"conv{index + 1}"] = x
        if self.average is not None:
            endpoints[FEATURE_ENDPOINT] = self.average(x)
            return endpoints
        x = self.flatten(self.grid_pool(keras.ops.mean(x, axis=1)))
        for index, (fc, norm) in enumerate(self.fcs):
            x = fc(maybe_dropout(x, self.dropout_rate, training))
            if norm is not None:
                x = norm(x, training=training)
            x = keras.ops.relu(x)
            endpoints[f"fc{index + 6}"] = x
        endpoints[FEATURE_ENDPOINT] = x
        return endpoints


c3d = partial(C3D)

register_video_backbone("c3d", c3d)
