"""Every pair of runtimes available on the GPU host agrees on the same inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onboard.inference import RUNTIME_NAMES, RuntimeConfig
from onboard.model import ModelSpec, make_input
from suites._support import attach, runtime_or_skip

pytestmark = pytest.mark.tier2

#: Any pair may include an FP16 runtime, so the FP16 tolerance applies.
PAIR_ATOL = 2e-2
PAIR_RTOL = 2e-2


@pytest.mark.parametrize(
    ("first", "second"),
    list(itertools.combinations(RUNTIME_NAMES, 2)),
    ids=lambda name: name,
)
def test_runtimes_agree_pairwise(
    first: str, second: str, onnx_model: ModelSpec, config: RuntimeConfig
) -> None:
    image = make_input(1, seed=23)
    outputs: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}
    for name in (first, second):
        runtime = runtime_or_skip(name, config)
        handle = runtime.deserialize(runtime.compile(onnx_model))
        outputs[name] = runtime.infer(handle, {"image": image})["embedding"]
        labels[name] = runtime.label
        runtime.release(handle)
    difference = float(np.max(np.abs(outputs[first] - outputs[second])))
    attach(f"{first} vs {second}", {"labels": labels, "max_abs_difference": difference})
    np.testing.assert_allclose(outputs[first], outputs[second], atol=PAIR_ATOL, rtol=PAIR_RTOL)
