"""Engine cache keys: what makes an engine host-specific, and refusal before deserializing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from onboard.errors import EngineCacheMismatch
from onboard.inference import EngineCache, EngineCacheKey, RuntimeConfig
from onboard.inference.ort import CPU_EP, OnnxRuntimeRuntime
from onboard.model import ModelSpec, build_onnx_model

pytestmark = pytest.mark.tier1

KEY = EngineCacheKey(
    model_sha256="a" * 64,
    runtime_version="10.3.0",
    gpu_name="Orin (nvgpu)",
    compute_capability="8.7",
    precision="fp16",
    workspace_bytes=1 << 30,
)

CHANGES = {
    "model_sha256": "b" * 64,
    "runtime_version": "10.7.0",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "precision": "fp32",
    "workspace_bytes": 2 << 30,
}


def test_the_digest_is_stable_and_a_pure_function_of_the_fields() -> None:
    same = EngineCacheKey(**KEY.to_dict())
    assert same.digest() == KEY.digest()
    assert len(KEY.digest()) == 32


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_every_field_changes_the_key(field: str) -> None:
    other = dataclasses.replace(KEY, **{field: CHANGES[field]})
    assert other.digest() != KEY.digest()
    assert set(other.differences(KEY)) == {field}


def test_store_then_lookup_hits_and_another_host_misses(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    assert cache.lookup(KEY) is None
    path = cache.store(KEY, b"engine-bytes")
    assert cache.lookup(KEY) == path
    assert cache.load(path, KEY) == b"engine-bytes"
    other_gpu = dataclasses.replace(KEY, gpu_name="NVIDIA GeForce RTX 4090", compute_capability="8.9")
    assert cache.lookup(other_gpu) is None
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_an_engine_built_for_another_host_is_refused_naming_each_difference(
    tmp_path: Path,
) -> None:
    cache = EngineCache(tmp_path)
    path = cache.store(KEY, b"engine-bytes")
    host = dataclasses.replace(KEY, runtime_version="10.7.0", compute_capability="9.0")
    with pytest.raises(EngineCacheMismatch) as caught:
        cache.load(path, host)
    assert set(caught.value.differences) == {"runtime_version", "compute_capability"}
    assert "runtime_version: engine '10.3.0' != host '10.7.0'" in str(caught.value)


def test_a_copied_engine_whose_sidecar_names_another_gpu_is_refused(tmp_path: Path) -> None:
    # Someone copies an engine built on an Orin next to one expected on this host.
    cache = EngineCache(tmp_path)
    host = dataclasses.replace(KEY, gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    foreign = cache.store(KEY, b"orin-engine")
    target = cache.engine_path(host)
    foreign.rename(target)
    foreign.with_suffix(".json").rename(target.with_suffix(".json"))
    assert cache.lookup(host) == target  # present under the host's name...
    with pytest.raises(EngineCacheMismatch, match="gpu_name"):
        cache.load(target, host)  # ...but refused by its recorded key


def test_an_engine_without_a_readable_key_is_refused(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path = cache.store(KEY, b"engine-bytes")
    path.with_suffix(".json").write_text(json.dumps({"model_sha256": "x"}))
    with pytest.raises(EngineCacheMismatch, match="sidecar"):
        cache.load(path, KEY)


def test_key_round_trips_through_its_dict_and_rejects_extra_fields() -> None:
    assert EngineCacheKey.from_dict(KEY.to_dict()) == KEY
    with pytest.raises(ValueError, match="engine key fields"):
        EngineCacheKey.from_dict({**KEY.to_dict(), "batch": 8})


def test_onnxruntime_key_follows_the_model_bytes_and_versions(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    runtime = OnnxRuntimeRuntime(RuntimeConfig(cache_dir=tmp_path, providers=(CPU_EP,)))
    first = build_onnx_model(tmp_path / "a.onnx")
    again = build_onnx_model(tmp_path / "b.onnx")
    other_seed = build_onnx_model(tmp_path / "c.onnx", seed=1)
    assert runtime.host_key(first) == runtime.host_key(again)  # same bytes, same key
    assert runtime.host_key(first).model_sha256 != runtime.host_key(other_seed).model_sha256
    assert runtime.host_key(first).runtime_version.startswith(f"ort-{runtime.version}/trt-")


def test_model_spec_hash_is_the_file_sha256(onnx_model: ModelSpec) -> None:
    import hashlib

    assert onnx_model.sha256() == hashlib.sha256(onnx_model.onnx_path.read_bytes()).hexdigest()
