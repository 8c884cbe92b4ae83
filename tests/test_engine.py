"""The Engine API clients (hil.backends.engine) on the rig's colima engine, and the container config."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from hil.backends.base import CONTAINER_LIB, CONTAINER_OUT, RunRequest
from hil.backends.docker import container_config, memory_bytes
from hil.backends.engine import (
    Engine,
    EngineError,
    EngineNotFoundError,
    open_engine,
)
from hil.errors import ConfigError
from hil.sim import Rig


@pytest.mark.parametrize(
    ("text", "expected"),
    [("48m", 48 * 1024**2), ("48MB", 48 * 1024**2), ("2g", 2 * 1024**3), ("512k", 512 * 1024),
     ("1.5g", int(1.5 * 1024**3)), ("1000", 1000), ("1000b", 1000)],
)
def test_memory_sizes_read_as_docker_run_reads_them(text: str, expected: int) -> None:
    assert memory_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "m", "12x", "lots"])
def test_bad_memory_size_is_a_config_error_naming_the_value(text: str) -> None:
    with pytest.raises(ConfigError, match=r"docker\.memory"):
        memory_bytes(text)


def test_container_config_mounts_checkout_results_and_worker() -> None:
    req = RunRequest(name="hil-x", image="img:1", command=("python3", "/hil/worker.py", "-k", "a b"),
                     env={"A": "1"}, workdir="/src/sub", src="/home/u/repo", out="/home/u/repo/reports/runs/x",
                     labels={"l": "v"}, network="none", memory="48m", lib="/opt/hil/lib",
                     user="1000:1000", runtime="nvidia")
    config = container_config(req)
    assert config["Cmd"] == ["python3", "/hil/worker.py", "-k", "a b"]
    assert config["Env"] == ["A=1"] and config["User"] == "1000:1000" and config["Tty"] is False
    host = config["HostConfig"]
    assert host["Binds"] == ["/home/u/repo:/src:ro", f"/home/u/repo/reports/runs/x:{CONTAINER_OUT}:rw",
                             f"/opt/hil/lib:{CONTAINER_LIB}:ro"]
    assert host["NetworkMode"] == "none" and host["Runtime"] == "nvidia"
    assert host["Memory"] == host["MemorySwap"] == 48 * 1024**2


@pytest.mark.parametrize("url", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"])
def test_an_engine_that_does_not_answer_raises_engine_error(url: str) -> None:
    # The SDK client asks the engine for its API version as it is made; its errors are ours.
    with pytest.raises(EngineError, match="DockerException"):
        open_engine(url, 1)


def test_the_engine_runs_a_container_and_separates_its_streams(sim_rig: Rig, tmp_path: Path) -> None:
    engine = open_engine(sim_rig.colima_host, 10)
    assert isinstance(engine, Engine)
    engine.ping()
    assert engine.version()["ApiVersion"]
    with pytest.raises(EngineNotFoundError):
        engine.inspect_image(f"hil-no-such-image:{uuid.uuid4().hex[:8]}")
    label = f"io.pytest-hil.test-{uuid.uuid4().hex[:8]}"
    script = "import sys; print('out-1'); print('err-1', file=sys.stderr); print('x' * 100000); sys.exit(3)"
    cid = engine.create({"Image": sim_rig.base_image, "Cmd": ["python3", "-c", script],
                         "Labels": {label: "1"}, "Tty": False,
                         "HostConfig": {"NetworkMode": "none"}}, f"hil-engine-test-{uuid.uuid4().hex[:8]}")
    try:
        assert [c["Id"] for c in engine.containers(label)] == [cid]
        stream = engine.attach(cid)
        engine.start(cid)
        out, err = b"", b""
        for stdout, stderr in stream:
            out += stdout or b""
            err += stderr or b""
        stream.close()
        assert out == b"out-1\n" + b"x" * 100000 + b"\n"
        assert err == b"err-1\n"
        assert engine.wait(cid, timeout=30)["StatusCode"] == 3
        assert engine.inspect_container(cid)["State"]["OOMKilled"] is False
    finally:
        engine.remove(cid)
    with pytest.raises(EngineNotFoundError):
        engine.inspect_container(cid)
    assert json.dumps(engine.containers(label)) == "[]"
