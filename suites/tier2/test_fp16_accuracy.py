"""PyTorch FP16 on the GPU against FP32, within a stated tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from onboard.inference import RuntimeConfig
from onboard.model import ModelSpec, make_input, reference_forward
from onboard.recorder import FlightRecorder
from suites._support import attach, runtime_or_skip

pytestmark = pytest.mark.tier2

#: FP16 against the float64/FP32 reference: |fp16 - fp32| <= FP16_ATOL + FP16_RTOL * |fp32|.
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2
#: Cosine similarity of each FP16 embedding with its FP32 reference.
MIN_COSINE = 0.9999


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_torch_fp16_matches_fp32_within_tolerance(
    torch_model: ModelSpec, config: RuntimeConfig, recorder: FlightRecorder
) -> None:
    runtime = runtime_or_skip("torch-fp16", config, recorder)
    handle = runtime.deserialize(runtime.compile(torch_model))
    import torch

    from onboard.model import build_torch_model

    image = make_input(1, seed=11)
    fp16 = runtime.infer(handle, {"image": image})["embedding"]
    reference = reference_forward(image)
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # a true FP32 GPU result, not TF32
    try:
        with torch.inference_mode():
            fp32_gpu = build_torch_model().cuda()(torch.from_numpy(image).cuda()).cpu().numpy()
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    runtime.release(handle)
    error = float(np.max(np.abs(fp16 - reference)))
    cosine = float(_cosine(fp16, reference).min())
    attach(
        "fp16 vs fp32",
        {
            "runtime": runtime.label,
            "max_abs_error_vs_fp64_reference": error,
            "max_abs_error_fp32_gpu_vs_reference": float(np.max(np.abs(fp32_gpu - reference))),
            "min_cosine": cosine,
            "tolerance": {"atol": FP16_ATOL, "rtol": FP16_RTOL, "min_cosine": MIN_COSINE},
        },
    )
    np.testing.assert_allclose(fp32_gpu, reference, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(fp16, reference, atol=FP16_ATOL, rtol=FP16_RTOL)
    np.testing.assert_allclose(fp16, fp32_gpu, atol=FP16_ATOL, rtol=FP16_RTOL)
    assert cosine >= MIN_COSINE
