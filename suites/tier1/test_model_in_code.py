"""The embedder defined in code: deterministic, valid ONNX, and the same in torch and onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onboard.inference import RuntimeConfig, create_runtime
from onboard.inference.ort import CPU_EP
from onboard.model import (
    EMBEDDING_DIM,
    ModelSpec,
    build_onnx_model,
    make_input,
    make_weights,
    reference_forward,
)

pytestmark = pytest.mark.tier1


def test_weights_are_deterministic_for_a_seed() -> None:
    first, second, other = make_weights(), make_weights(), make_weights(seed=1)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert not np.array_equal(first["conv1.weight"], other["conv1.weight"])


def test_the_helper_graph_is_valid_onnx_with_the_declared_shapes(onnx_model: ModelSpec) -> None:
    import onnx

    model = onnx.load(str(onnx_model.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "image" and out.name == "embedding"
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    assert dims == [1, EMBEDDING_DIM]
    assert [n.op_type for n in model.graph.node].count("Conv") == 3


def test_building_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    a = build_onnx_model(tmp_path / "a.onnx")
    b = build_onnx_model(tmp_path / "b.onnx")
    assert a.sha256() == b.sha256()


def test_the_embedding_is_not_degenerate() -> None:
    out = reference_forward(make_input(4))
    assert out.shape == (4, EMBEDDING_DIM)
    assert np.all(np.isfinite(out))
    assert np.std(out) > 0.05
    assert not np.allclose(out[0], out[1])  # different inputs, different embeddings


def test_torch_export_agrees_with_the_helper_graph(
    torch_model: ModelSpec, onnx_model: ModelSpec, tmp_path: Path
) -> None:
    config = RuntimeConfig(cache_dir=tmp_path, providers=(CPU_EP,))
    image = make_input()
    outputs = []
    for spec in (torch_model, onnx_model):
        runtime = create_runtime("onnxruntime", config=config)
        outputs.append(runtime.infer(runtime.deserialize(runtime.compile(spec)), {"image": image}))
    np.testing.assert_allclose(outputs[0]["embedding"], outputs[1]["embedding"], atol=1e-5)
    np.testing.assert_allclose(outputs[0]["embedding"], reference_forward(image), atol=1e-5)


def test_the_torch_module_in_fp32_on_the_cpu_matches_the_reference() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from onboard.model import build_torch_model

    image = make_input(2)
    with torch.inference_mode():
        got = build_torch_model()(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(got, reference_forward(image), atol=1e-5)
