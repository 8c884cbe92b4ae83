"""Inference runtimes behind one protocol: PyTorch FP16, TensorRT and ONNX Runtime.

Use :func:`create_runtime` for one runtime by name or :func:`build_with_fallback`
for the product's chain.  The strategy modules import their libraries lazily,
so importing this package needs only numpy.
"""

from onboard.inference.base import (
    AlertCallback,
    EngineEntry,
    EngineHandle,
    FallbackNotice,
    InferenceRuntime,
    RuntimeConfig,
)
from onboard.inference.cache import EngineCache, EngineCacheKey
from onboard.inference.factory import (
    DEFAULT_CHAIN,
    RUNTIME_NAMES,
    build_with_fallback,
    create_runtime,
)

__all__ = [
    "DEFAULT_CHAIN",
    "RUNTIME_NAMES",
    "AlertCallback",
    "EngineCache",
    "EngineCacheKey",
    "EngineEntry",
    "EngineHandle",
    "FallbackNotice",
    "InferenceRuntime",
    "RuntimeConfig",
    "build_with_fallback",
    "create_runtime",
]
