"""The committed generated code matches fleet.proto, and only the transport imports grpc."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
GENERATED = ("fleet_pb2.py", "fleet_pb2_grpc.py", "fleet_pb2.pyi")


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    (tmp_path / "pollinate" / "transport").mkdir(parents=True)
    proto = SRC / "pollinate" / "transport" / "fleet.proto"
    (tmp_path / "pollinate" / "transport" / "fleet.proto").write_bytes(proto.read_bytes())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--grpc_python_out=.",
            "--pyi_out=.",
            "pollinate/transport/fleet.proto",
        ],
        cwd=tmp_path,
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "pollinate" / "transport" / name).read_text()
        committed = (SRC / "pollinate" / "transport" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto` and commit the result"


def test_only_the_transport_imports_grpc() -> None:
    offenders = []
    for path in (SRC / "pollinate").rglob("*.py"):
        if "transport" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "grpc" or n.startswith("grpc.") for n in names):
                offenders.append(str(path.relative_to(SRC)))
    assert offenders == []
