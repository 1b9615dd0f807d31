"""A live `artifactd serve` for the client tests (the binary the test command built)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    binary = Path(os.environ.get("ARTIFACTD_BIN", REPO / "target" / "debug" / "artifactd"))
    if not binary.exists():
        pytest.fail(f"{binary} does not exist: run scripts/test (it builds it), or set ARTIFACTD_BIN")
    with tempfile.TemporaryDirectory() as data_dir:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACTD_")}
        environment.update(
            ARTIFACTD_DATA_DIR=data_dir,
            ARTIFACTD_SERVER__GRPC_ADDR="127.0.0.1:0",
            ARTIFACTD_SERVER__HTTP_ADDR="127.0.0.1:0",
            ARTIFACTD_LOG__FILTER="warn",
            ARTIFACTD_AUDIT__CHECKPOINT_INTERVAL_SECONDS="1",
        )
        process = subprocess.Popen(
            [str(binary), "serve"], env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert process.stdout is not None
        ready = process.stdout.readline()
        if not ready.startswith("artifactd ready"):
            process.kill()
            pytest.fail(f"artifactd did not start: {ready!r}")
        address = next(part for part in ready.split() if part.startswith("grpc=")).removeprefix("grpc=")
        # The first start made an admin key; the clients send ARTIFACTD_TOKEN by default.
        os.environ["ARTIFACTD_TOKEN"] = (Path(data_dir) / "admin.key").read_text().strip()
        try:
            yield address
        finally:
            process.terminate()
            process.wait(timeout=30)
