"""A small embedding model defined in code, for the suites: no weights from anywhere.

Three 3x3 stride-2 convolutions with ReLU, a global average pool and a linear
layer turn a ``[batch, 3, 64, 64]`` image into a ``[batch, 128]`` embedding.
The weights come from numpy with a fixed seed (:func:`make_weights`), so the
same model exists three ways that must agree:

* :func:`build_onnx_model` writes it with ``onnx.helper`` (no torch needed);
* :func:`build_torch_model` makes the ``torch.nn.Module``, and
  :func:`export_torch_onnx` exports that with ``torch.onnx.export``;
* :func:`reference_forward` computes it in float64 numpy: the FP32 reference.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Seed of the deterministic weights.
SEED = 20261122
#: Channels of the input and of each convolution.
CHANNELS = (3, 16, 32, 64)
#: Size of the produced embedding.
EMBEDDING_DIM = 128
#: Side of the square input image.
IMAGE_SIZE = 64
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
#: ONNX opset and IR version: old enough for the ONNX Runtime and TensorRT of JetPack 6.
OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class ModelSpec:
    """What the runtimes need to know of a model: its ONNX file and its tensor names.

    ``torch_factory`` builds the equivalent ``torch.nn.Module`` for the PyTorch
    runtime (which cannot read ONNX); it is ``None`` where torch is absent.
    """

    name: str
    onnx_path: Path
    input_names: tuple[str, ...] = (INPUT_NAME,)
    output_names: tuple[str, ...] = (OUTPUT_NAME,)
    input_shapes: tuple[tuple[int, ...], ...] = ((1, CHANNELS[0], IMAGE_SIZE, IMAGE_SIZE),)
    torch_factory: Any = None

    def sha256(self) -> str:
        """The sha256 of the ONNX file: the model's identity in engine cache keys."""
        return file_sha256(self.onnx_path)


def file_sha256(path: Path | str) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """The model's float32 weights, He-initialised from a fixed numpy seed."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for index, (cin, cout) in enumerate(itertools.pairwise(CHANNELS), start=1):
        std = np.sqrt(2.0 / (cin * 9))
        weights[f"conv{index}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) * std).astype(np.float32)
        weights[f"conv{index}.bias"] = (rng.standard_normal(cout) * 0.05).astype(np.float32)
    std = np.sqrt(1.0 / CHANNELS[-1])
    weights["fc.weight"] = (rng.standard_normal((EMBEDDING_DIM, CHANNELS[-1])) * std).astype(np.float32)
    weights["fc.bias"] = (rng.standard_normal(EMBEDDING_DIM) * 0.05).astype(np.float32)
    return weights


def make_input(batch: int = 1, seed: int = 7) -> np.ndarray:
    """A deterministic float32 input image batch in [0, 1)."""
    rng = np.random.default_rng(seed)
    return rng.random((batch, CHANNELS[0], IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)


def build_onnx_model(path: Path | str, batch: int = 1, seed: int = SEED) -> ModelSpec:
    """Write the model as ONNX with ``onnx.helper`` (no torch) and return its spec."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = make_weights(seed)
    initializers = [numpy_helper.from_array(array, name=name) for name, array in weights.items()]
    nodes = []
    current = INPUT_NAME
    for index in range(1, len(CHANNELS)):
        conv_out, relu_out = f"conv{index}_out", f"relu{index}_out"
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"conv{index}.weight", f"conv{index}.bias"],
                [conv_out],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [conv_out], [relu_out]))
        current = relu_out
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], [OUTPUT_NAME], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "hil_embedder",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, 3, 64, 64])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, EMBEDDING_DIM])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="onboard.model",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    # Same weights, so the torch module is this model too; torch is imported only if called.
    return ModelSpec(
        name="hil_embedder",
        onnx_path=target,
        input_shapes=((batch, CHANNELS[0], IMAGE_SIZE, IMAGE_SIZE),),
        torch_factory=functools.partial(build_torch_model, seed),
    )


def build_torch_model(seed: int = SEED) -> Any:
    """The model as a ``torch.nn.Module`` in eval mode, with the numpy weights loaded.

    Imports torch here, so the rest of this module works where torch is absent.
    """
    import torch
    from torch import nn

    class Embedder(nn.Module):
        """Three stride-2 convolutions, a global average pool and a linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(CHANNELS[0], CHANNELS[1], 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(CHANNELS[1], CHANNELS[2], 3, stride=2, padding=1)
            self.conv3 = nn.Conv2d(CHANNELS[2], CHANNELS[3], 3, stride=2, padding=1)
            self.fc = nn.Linear(CHANNELS[3], EMBEDDING_DIM)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv1(image))
            x = torch.relu(self.conv2(x))
            x = torch.relu(self.conv3(x))
            x = torch.flatten(torch.mean(x, dim=(2, 3), keepdim=True), 1)
            return self.fc(x)

    torch.manual_seed(seed)
    module = Embedder()
    state = {name: torch.from_numpy(array) for name, array in make_weights(seed).items()}
    module.load_state_dict(state)
    return module.eval()


def export_torch_onnx(path: Path | str, batch: int = 1, seed: int = SEED) -> ModelSpec:
    """Export :func:`build_torch_model` to ONNX with ``torch.onnx.export``; return its spec."""
    import torch

    module = build_torch_model(seed)
    example = torch.from_numpy(make_input(batch))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter needs no onnxscript and writes a single file; torch >= 2.9
    # warns that it is the legacy path, which is no news to the suites.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(target),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=False,
        )
    return ModelSpec(
        name="hil_embedder_torch",
        onnx_path=target,
        input_shapes=((batch, CHANNELS[0], IMAGE_SIZE, IMAGE_SIZE),),
        torch_factory=functools.partial(build_torch_model, seed),
    )


def _conv2d_stride2(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3, stride 2, padding 1 convolution by im2col, in the dtype of ``x``."""
    batch, cin, height, width = x.shape
    cout = weight.shape[0]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    oh, ow = (height + 1) // 2, (width + 1) // 2
    cols = np.empty((batch, cin, 3, 3, oh, ow), dtype=x.dtype)
    for ky in range(3):
        for kx in range(3):
            cols[:, :, ky, kx] = padded[:, :, ky : ky + 2 * oh : 2, kx : kx + 2 * ow : 2]
    out = np.einsum("bckloq,dckl->bdoq", cols, weight.astype(x.dtype), optimize=True)
    return out + bias.astype(x.dtype).reshape(1, cout, 1, 1)


def reference_forward(image: np.ndarray, seed: int = SEED) -> np.ndarray:
    """The model computed in float64 numpy: the reference every runtime is held to."""
    weights = {k: v.astype(np.float64) for k, v in make_weights(seed).items()}
    x = image.astype(np.float64)
    for index in range(1, len(CHANNELS)):
        x = np.maximum(_conv2d_stride2(x, weights[f"conv{index}.weight"], weights[f"conv{index}.bias"]), 0.0)
    pooled = x.mean(axis=(2, 3))
    return pooled @ weights["fc.weight"].T + weights["fc.bias"]
