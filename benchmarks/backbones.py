"""Size, cost and training speed of every registered backbone, as one markdown table.

    python benchmarks/backbones.py [--backbones=resnet18,resnet50] [--batch_size=32]
        [--sizes=32,224] [--train_size=32] [--steps=0] [--windows=5] [--json=out.json]

For each backbone (default: every name in ``selfsup.models.BACKBONES``) one row gives:

* trainable parameters of the backbone alone (no head), built for the largest of ``--sizes``;
  a note says when the count differs at another size (``stem="auto"`` gives inputs up to 64 px
  a different stem);
* FLOPs per image at each of ``--sizes``: 2 × the multiply-adds of the convolutions
  (Conv2D/Conv3D/depthwise/transposed, grouped included) and matrix products (Dense, matmul,
  einsum; AlexNet's and VGG's adaptive average pooling is a small einsum, so it counts) of the
  inference graph traced at batch 1 (:func:`count_flops`). Biases, BatchNorm, activations,
  pooling and residual additions are not counted (under 1% for ResNets), as in the published
  figures (ResNet-50 at 224 px: 4.1 G multiply-adds = 8.2 GFLOPs);
* training throughput in images/s at ``--train_size`` px only (training large nets at 224 px
  is too slow on a CPU): backbone + Dense(10) head, softmax cross-entropy, SGD with momentum,
  one ``tf.function`` step on fixed random data; the tracing step and ``--warmup_steps`` are
  excluded, then the median over ``--windows`` timed windows of ``--steps`` steps each.

A backbone that fails to build, trace or train still gets a row, with the error in its notes.
The numbers depend on the machine and its load; this is a script that prints them, not a test.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import keras
import numpy as np
import tensorflow as tf

# Ops whose multiply-adds are counted, and ops that would hide uncounted work. A graph holding
# one of the latter is an error, never a silent undercount.
COUNTED_OPS = ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput",
               "Conv3DBackpropInputV2", "MatMul", "BatchMatMul", "BatchMatMulV2",
               "BatchMatMulV3", "Einsum")
CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
UNCOUNTED_HEAVY_OPS = ("While", "StatelessWhile", "If", "StatelessIf", "Case",
                       "StatelessCase", "For", "FusedMatMul", "_FusedConv2D", "_FusedMatMul")
NUM_CLASSES = 10


class UncountedOpError(ValueError):
    """The graph holds work the counter cannot attribute (unknown shapes, loops, branches)."""


@dataclass
class FlopCount:
    """FLOPs of one traced call: ``flops`` = 2 × ``multiply_adds``; ``by_op`` per op type."""

    multiply_adds: int = 0
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return 2 * self.multiply_adds

    def add(self, op_type: str, multiply_adds: int) -> None:
        self.multiply_adds += multiply_adds
        self.by_op[op_type] = self.by_op.get(op_type, 0) + multiply_adds


def _shape(tensor: tf.Tensor, op: tf.Operation) -> list[int]:
    shape = tensor.shape
    if shape.rank is None or not shape.is_fully_defined():
        raise UncountedOpError(f"{op.type} op {op.name!r} has a partly unknown shape {shape}")
    return shape.as_list()


def op_multiply_adds(op: tf.Operation) -> int:
    """Multiply-adds of one counted op (see COUNTED_OPS), from its static shapes.

    A convolution's output element each takes one multiply-add per kernel tap and input channel
    of its group: ``out_elements × kh × kw × filter_in``, the filter being
    ``[kh, kw, in_channels / groups, out_channels]``. A depthwise filter
    ``[kh, kw, in_channels, multiplier]`` gives each output ``kh × kw``. A transposed convolution
    (``Conv2DBackpropInput``) is the forward convolution run backwards: ``elements(out_backprop)
    × kh × kw × filter[-2]``. A matrix product ``[..., m, k] @ [..., k, n]`` costs
    ``elements(output) × k``. Einsums: see :func:`_einsum_multiply_adds`.
    """
    kind = op.type
    if kind in ("Conv2D", "Conv3D"):
        kernel = _shape(op.inputs[1], op)
        return math.prod(_shape(op.outputs[0], op)) * math.prod(kernel[:-1])
    if kind == "DepthwiseConv2dNative":
        kernel = _shape(op.inputs[1], op)
        return math.prod(_shape(op.outputs[0], op)) * kernel[0] * kernel[1]
    if kind in ("Conv2DBackpropInput", "Conv3DBackpropInputV2"):
        kernel = _shape(op.inputs[1], op)
        return math.prod(_shape(op.inputs[2], op)) * math.prod(kernel[:-1])
    if kind == "MatMul":
        a = _shape(op.inputs[0], op)
        inner = a[0] if op.get_attr("transpose_a") else a[1]
        return math.prod(_shape(op.outputs[0], op)) * inner
    if kind.startswith("BatchMatMul"):
        a = _shape(op.inputs[0], op)
        adjoint = op.get_attr("adj_x")
        inner = a[-2] if adjoint else a[-1]
        return math.prod(_shape(op.outputs[0], op)) * inner
    if kind == "Einsum":
        return _einsum_multiply_adds(op)
    raise ValueError(f"{kind} is not a counted op")


def _einsum_multiply_adds(op: tf.Operation) -> int:
    """A two-operand einsum multiplies once per combination of all its indices (summed or
    not): ``ij,jk->ik`` is ``i·j·k``. A one-operand einsum (transpose, sum) multiplies nothing.

    Index sizes come from whichever operand or output knows them statically; ``...`` stands for
    the broadcast of the operands' unlabelled leading dimensions.
    """
    equation = op.get_attr("equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    inputs, output = equation.replace(" ", "").split("->")
    terms = inputs.split(",")
    if len(terms) < 2:
        return 0
    sizes: dict[str, int] = {}
    ellipses: list[list[int | None]] = []
    for term, tensor in [*zip(terms, op.inputs, strict=True), (output, op.outputs[0])]:
        dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
        labels = term.replace("...", "")
        if dims is None:
            continue
        if "..." in term:
            head = term.index("...")
            ellipsis_rank = len(dims) - len(labels)
            ellipses.append(dims[head:head + ellipsis_rank])
            dims = dims[:head] + dims[head + ellipsis_rank:]
        for label, dim in zip(labels, dims, strict=True):
            if dim is not None:
                sizes[label] = max(sizes.get(label, 1), dim)
    unknown = {label for label in "".join(terms) + output if label.isalpha()} - set(sizes)
    if unknown:
        raise UncountedOpError(f"Einsum op {op.name!r} ({equation}): unknown size of "
                               f"{''.join(sorted(unknown))}")
    broadcast: list[int] = []
    for dims in ellipses:  # right-aligned broadcast of the "..." parts
        if None in dims:
            raise UncountedOpError(f"Einsum op {op.name!r} ({equation}): unknown '...' size")
        rank = max(len(broadcast), len(dims))
        broadcast = [max(a, b) for a, b in zip([1] * (rank - len(broadcast)) + broadcast,
                                               [1] * (rank - len(dims)) + dims, strict=True)]
    return math.prod(sizes.values()) * math.prod(broadcast)


def _nested_graph(graph: tf.Graph, name: str) -> tf.Graph:
    """The graph of function ``name`` called from ``graph`` (searched in enclosing graphs too)."""
    while graph is not None:
        function = getattr(graph, "_functions", {}).get(name)
        if function is not None and getattr(function, "graph", None) is not None:
            return function.graph
        graph = getattr(graph, "outer_graph", None)
    raise UncountedOpError(f"cannot find the graph of the called function {name!r}")


def graph_multiply_adds(graph: tf.Graph, count: FlopCount | None = None) -> FlopCount:
    """Counts the multiply-adds of every counted op of ``graph`` and of the functions it calls.

    Keras runs some layers (e.g. grouped convolutions on a CPU) inside a nested tf.function; those
    calls are followed. Loops and conditionals raise :class:`UncountedOpError`.
    """
    count = FlopCount() if count is None else count
    for op in graph.get_operations():
        if op.type in COUNTED_OPS:
            count.add(op.type, op_multiply_adds(op))
        elif op.type in CALL_OPS:
            graph_multiply_adds(_nested_graph(graph, op.get_attr("f").name), count)
        elif op.type in UNCOUNTED_HEAVY_OPS:
            raise UncountedOpError(f"cannot count the FLOPs of {op.type} op {op.name!r}")
    return count


def trace(fn: Callable[[tf.Tensor], object], input_shape: Sequence[int]
          ) -> tf.types.experimental.ConcreteFunction:
    """``fn`` traced as a tf.function for one float32 input of a fully known shape."""
    return tf.function(fn).get_concrete_function(tf.TensorSpec(list(input_shape), tf.float32))


def count_flops(fn: Callable[[tf.Tensor], object], input_shape: Sequence[int]) -> FlopCount:
    """FLOPs (2 × multiply-adds of convolutions and matrix products) of ``fn(input)``.

    ``input_shape`` includes the batch dimension; use batch 1 for a per-image count.
    """
    return graph_multiply_adds(trace(fn, input_shape).graph)


def tf_profiler_flops(graph: tf.Graph) -> int:
    """TensorFlow's own static float-op count of ``graph`` (a cross-check, not the convention).

    ``tf.compat.v1.profiler`` counts convolutions and matrix products as 2 × multiply-adds, like
    :func:`count_flops`, but also elementwise ops (BatchNorm's multiply/add, residual adds,
    biases, pooling) and it does not look inside nested function calls.
    """
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # the profiler calls a deprecated TF1 helper and says so
    try:
        return int(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)
    finally:
        logger.setLevel(level)


def trainable_parameters(model: keras.Model) -> int:
    return int(sum(math.prod(v.shape) for v in model.trainable_variables))


@dataclass
class Row:
    """One backbone's measurements (``None`` where a measurement failed; see ``notes``)."""

    backbone: str
    parameters: dict[int, int] = field(default_factory=dict)
    flops: dict[int, int] = field(default_factory=dict)
    tf_profiler_flops: dict[int, int] = field(default_factory=dict)
    images_per_second: float | None = None
    window_images_per_second: list[float] = field(default_factory=list)
    steps_per_window: int | None = None
    seconds: float = 0.0
    train_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}"


def measure_static(name: str, size: int, row: Row) -> None:
    """Fills ``row``'s parameters and FLOPs at ``size`` px (batch-1 inference graph)."""
    from selfsup.models import FEATURE_ENDPOINT, build_backbone

    model = build_backbone(name, input_size=size)
    function = trace(lambda images: model(images, training=False), [1, size, size, 3])
    outputs = function.structured_outputs
    if not isinstance(outputs, dict) or FEATURE_ENDPOINT not in outputs:
        row.notes.append(f"{size} px: no {FEATURE_ENDPOINT!r} endpoint")
    row.parameters[size] = trainable_parameters(model)
    row.flops[size] = graph_multiply_adds(function.graph).flops
    row.tf_profiler_flops[size] = tf_profiler_flops(function.graph)


def measure_throughput(name: str, size: int, batch_size: int, steps: int, windows: int,
                       warmup_steps: int, window_seconds: float, row: Row) -> None:
    """Fills ``row``'s training images/s at ``size`` px (see the module docstring)."""
    from selfsup.models import FEATURE_ENDPOINT, build_backbone

    keras.utils.set_random_seed(0)
    backbone = build_backbone(name, input_size=size)
    head = keras.layers.Dense(NUM_CLASSES, name="head")
    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    images = tf.random.uniform([batch_size, size, size, 3], seed=0)
    labels = tf.random.uniform([batch_size], maxval=NUM_CLASSES, dtype=tf.int32, seed=1)

    # Variables are created eagerly (batch 1) so the tf.function only runs the step.
    head(backbone(images[:1], training=False)[FEATURE_ENDPOINT])
    variables = backbone.trainable_variables + head.trainable_variables
    optimizer.build(variables)

    @tf.function
    def train_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            features = backbone(images, training=True)[FEATURE_ENDPOINT]
            logits = head(features)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return loss

    train_step(images, labels).numpy()  # traces
    start = time.perf_counter()
    for _ in range(max(1, warmup_steps)):
        loss = train_step(images, labels)
    loss.numpy()
    step_seconds = (time.perf_counter() - start) / max(1, warmup_steps)
    if not np.isfinite(loss.numpy()):
        row.notes.append("non-finite training loss")
    if steps <= 0:
        steps = max(1, round(window_seconds / step_seconds))
    row.steps_per_window = steps
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            loss = train_step(images, labels)
        loss.numpy()
        row.window_images_per_second.append(batch_size * steps / (time.perf_counter() - start))
    row.images_per_second = statistics.median(row.window_images_per_second)


def benchmark(name: str, args: argparse.Namespace) -> Row:
    """Every measurement of one backbone; a failing one leaves ``None`` and a note."""
    row = Row(name)
    start = time.perf_counter()
    for size in args.sizes:
        try:
            measure_static(name, size, row)
        except Exception as exc:  # reported in the row, never skipped
            row.notes.append(f"{size} px FLOPs: {_error(exc)}")
        keras.backend.clear_session()
    train_start = time.perf_counter()
    try:
        measure_throughput(name, args.train_size, args.batch_size, args.steps, args.windows,
                           args.warmup_steps, args.window_seconds, row)
    except Exception as exc:
        row.notes.append(f"training: {_error(exc)}")
    keras.backend.clear_session()
    row.train_seconds = time.perf_counter() - train_start
    reference = max(args.sizes)
    for size, count in sorted(row.parameters.items()):
        if reference in row.parameters and count != row.parameters[reference]:
            row.notes.append(f"{_millions(count)} params at {size} px")
    row.seconds = time.perf_counter() - start
    return row


def _giga(value: float | None) -> str:
    return "failed" if value is None else f"{value / 1e9:.3g}"


def _millions(value: int | None) -> str:
    if value is None:
        return "failed"
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.1f} k"


def format_table(rows: list[Row], args: argparse.Namespace) -> str:
    """The markdown table (with its header notes) for ``rows``."""
    reference = max(args.sizes)
    lines = [
        "FLOPs per image = 2 × multiply-adds of convolutions and Dense/matmul/einsum ops in the "
        "batch-1 inference graph (biases, BatchNorm, activations, pooling, adds not counted). "
        "Each size is built with input_size=size (stem='auto': small stem up to 64 px). "
        f"Parameters: trainable, backbone only, at {reference} px. Training throughput measured at "
        f"{args.train_size} px only (large nets at 224 px are too slow to train on this CPU): "
        f"backbone + Dense(10), SGD, tf.function, batch {args.batch_size}, median of "
        f"{args.windows} timed windows (min–max in brackets) after warm-up; "
        f"{os.cpu_count()} CPU cores, other load on the machine lowers it.",
        "",
    ]
    header = (["backbone", f"params ({reference} px)"]
              + [f"GFLOPs {size} px" for size in args.sizes]
              + [f"train img/s ({args.train_size} px, batch {args.batch_size})", "notes"])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        params = row.parameters.get(reference)
        cells = [row.backbone, _millions(params)]
        cells += [_giga(row.flops.get(size)) for size in args.sizes]
        if row.images_per_second is None:
            cells.append("failed")
        else:
            low, high = min(row.window_images_per_second), max(row.window_images_per_second)
            cells.append(f"{row.images_per_second:.1f} ({low:.1f}–{high:.1f})")
        cells.append("; ".join(row.notes))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="",
                        help="Comma-separated registered names (default: all).")
    parser.add_argument("--batch_size", type=int, default=32, help="Training batch size.")
    parser.add_argument("--sizes", type=_int_list, default=[32, 224],
                        help="Input sizes (px) for the parameter and FLOP counts.")
    parser.add_argument("--train_size", type=int, default=32,
                        help="Input size (px) of the throughput measurement.")
    parser.add_argument("--steps", type=int, default=0,
                        help="Training steps per timed window (0: about --window_seconds).")
    parser.add_argument("--window_seconds", type=float, default=1.5,
                        help="Target length of a timed window when --steps=0.")
    parser.add_argument("--windows", type=int, default=5, help="Timed windows (median taken).")
    parser.add_argument("--warmup_steps", type=int, default=1,
                        help="Untimed steps (at least 1) after the untimed tracing step.")
    parser.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    args = parser.parse_args(argv)
    if args.batch_size <= 0 or args.train_size <= 0 or args.windows <= 0:
        parser.error("--batch_size, --train_size and --windows must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from selfsup.models import BACKBONES, ConfigError

    names = [n.strip() for n in args.backbones.split(",") if n.strip()] or BACKBONES.names()
    unknown = [n for n in names if n not in BACKBONES]
    if unknown:
        print(ConfigError(f"unknown backbone(s) {', '.join(unknown)}; valid names: "
                          f"{', '.join(BACKBONES.names())}"), file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = []
    for name in names:
        print(f"[{time.perf_counter() - start:6.1f} s] {name} …", file=sys.stderr, flush=True)
        rows.append(benchmark(name, args))
    print(format_table(rows, args))
    total = time.perf_counter() - start
    print(f"\n{len(rows)} backbones in {total:.0f} s.")
    if args.json:
        report = {
            "convention": "flops = 2 x multiply-adds of conv and matmul ops, batch-1 "
                          "inference graph; tf_profiler_flops: tf.compat.v1.profiler total",
            "batch_size": args.batch_size, "train_size": args.train_size,
            "sizes": args.sizes, "windows": args.windows, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "seconds": total,
            "rows": [asdict(row) for row in rows],
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
