"""Build a runtime by name, or walk a fallback chain recording each step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from onboard.errors import NoRuntimeAvailable, RuntimeUnavailable, UnknownRuntime
from onboard.inference.base import AlertCallback, InferenceRuntime, RuntimeConfig
from onboard.recorder import FlightRecorder

#: The product's default order: fastest first, the portable runtime last.
DEFAULT_CHAIN: tuple[str, ...] = ("tensorrt", "torch-fp16", "onnxruntime")

_Builder = Callable[..., InferenceRuntime]


def _torch_fp16(**kwargs: object) -> InferenceRuntime:
    from onboard.inference.torch_fp16 import TorchFp16Runtime

    return TorchFp16Runtime(**kwargs)  # type: ignore[arg-type]


def _tensorrt(**kwargs: object) -> InferenceRuntime:
    from onboard.inference.tensorrt import TensorRTRuntime

    return TensorRTRuntime(**kwargs)  # type: ignore[arg-type]


def _onnxruntime(**kwargs: object) -> InferenceRuntime:
    from onboard.inference.ort import OnnxRuntimeRuntime

    return OnnxRuntimeRuntime(**kwargs)  # type: ignore[arg-type]


#: Runtime names and their builders; each module is imported only when its runtime is built.
BUILDERS: dict[str, _Builder] = {
    "torch-fp16": _torch_fp16,
    "tensorrt": _tensorrt,
    "onnxruntime": _onnxruntime,
}

#: Every runtime name the factory knows.
RUNTIME_NAMES: tuple[str, ...] = tuple(BUILDERS)


def create_runtime(
    name: str,
    config: RuntimeConfig | None = None,
    recorder: FlightRecorder | None = None,
    alert: AlertCallback | None = None,
    fallback_from: str | None = None,
    fallback_reason: str | None = None,
) -> InferenceRuntime:
    """Build one runtime by name (``fallback_from`` and ``fallback_reason`` when it stands in).

    Raises :class:`UnknownRuntime` for a name not in :data:`RUNTIME_NAMES` and
    :class:`RuntimeUnavailable` when its library or device is missing.
    """
    builder = BUILDERS.get(name)
    if builder is None:
        raise UnknownRuntime(name, RUNTIME_NAMES)
    return builder(
        config=config or RuntimeConfig(),
        recorder=recorder,
        alert=alert,
        fallback_from=fallback_from,
        fallback_reason=fallback_reason,
    )


def build_with_fallback(
    chain: Sequence[str] = DEFAULT_CHAIN,
    config: RuntimeConfig | None = None,
    recorder: FlightRecorder | None = None,
    alert: AlertCallback | None = None,
) -> InferenceRuntime:
    """Build the first available runtime of ``chain``.

    Each unavailable runtime writes a ``fallback step`` record with its reason;
    the one built writes ``runtime selected``.  A runtime other than the first
    is built as a fallback, so its first ``infer`` writes ``fallback activated``
    and calls ``alert``, both carrying the reasons of the runtimes before it.
    Every name is checked before anything is built.
    """
    names = tuple(chain)
    if not names:
        raise ValueError("the fallback chain is empty")
    for name in names:
        if name not in BUILDERS:
            raise UnknownRuntime(name, RUNTIME_NAMES)
    reasons: list[str] = []
    for position, name in enumerate(names):
        try:
            runtime = create_runtime(
                name,
                config=config,
                recorder=recorder,
                alert=alert,
                fallback_from=names[0] if position else None,
                fallback_reason="; ".join(reasons) if position else None,
            )
        except RuntimeUnavailable as exc:
            reasons.append(str(exc))
            if recorder is not None:
                following = names[position + 1] if position + 1 < len(names) else None
                recorder.write("fallback step", failed=name, reason=exc.reason, next=following)
            continue
        if recorder is not None:
            recorder.write(
                "runtime selected",
                runtime=name,
                label=runtime.label,
                chain=list(names),
                fallback_from=names[0] if position else None,
            )
        return runtime
    raise NoRuntimeAvailable(names, tuple(reasons))
