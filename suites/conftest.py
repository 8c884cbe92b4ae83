"""Fixtures of the HIL suites: the model built at test time, a flight recorder, configs.

The model is written into a temporary folder for each session: by
``onnx.helper`` (no torch needed) and, where torch is installed, exported from
the same ``nn.Module`` with ``torch.onnx.export``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from onboard.inference import RuntimeConfig
from onboard.model import ModelSpec, build_onnx_model, export_torch_onnx
from onboard.recorder import FlightRecorder


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """The embedder as ONNX built with onnx.helper (batch 1)."""
    pytest.importorskip("onnx", reason="onnx is not installed")
    return build_onnx_model(tmp_path_factory.mktemp("model") / "embedder.onnx")


@pytest.fixture(scope="session")
def torch_model(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """The embedder exported from its torch module (carries the module factory)."""
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("onnx", reason="onnx is not installed")
    return export_torch_onnx(tmp_path_factory.mktemp("torch-model") / "embedder_torch.onnx")


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[FlightRecorder]:
    """A flight recorder writing to the test's temporary folder."""
    with FlightRecorder(tmp_path / "flight.jsonl") as rec:
        yield rec


@pytest.fixture
def config(tmp_path: Path) -> RuntimeConfig:
    """A runtime configuration whose engine caches live in the test's temporary folder."""
    return RuntimeConfig(cache_dir=tmp_path / "engines")
