"""The committed generated code matches fleet.proto, and only the transport imports grpc."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
GENERATED = ("fleet_pb2.py", "fleet_pb2_grpc.py", "fleet_pb2.pyi")

# The generator stamps its own version into the code it writes. Those stamps change with every
# grpcio-tools release, not with fleet.proto, so freshness is judged with them masked; the
# stamps are checked on their own below, against the oldest versions pyproject.toml admits.
_GRPC_STAMP = re.compile(r"GRPC_GENERATED_VERSION = '([\d.]+)'")
_PROTOBUF_STAMP = re.compile(r"# Protobuf Python Version: ([\d.]+)")
_PROTOBUF_CHECK = re.compile(r"(Domain\.PUBLIC,\s*)(\d+),\s*(\d+),\s*(\d+),")


def _masked(code: str) -> str:
    code = _GRPC_STAMP.sub("GRPC_GENERATED_VERSION = 'X'", code)
    code = _PROTOBUF_STAMP.sub("# Protobuf Python Version: X", code)
    return _PROTOBUF_CHECK.sub(r"\1X, X, X,", code)


def _generate(tmp_path: Path) -> Path:
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
    return tmp_path / "pollinate" / "transport"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh_dir = _generate(tmp_path)
    for name in GENERATED:
        fresh = _masked((fresh_dir / name).read_text())
        committed = _masked((SRC / "pollinate" / "transport" / name).read_text())
        assert fresh == committed, f"{name} is stale: run `make proto` and commit the result"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _minimum(requirement: str) -> tuple[int, ...]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for spec in dependencies:
        name, sep, floor = spec.partition(">=")
        if name.strip() == requirement and sep:
            return _version(floor.strip())
    raise AssertionError(f"pyproject.toml has no '{requirement}>=' dependency")


def test_generated_code_runs_on_the_oldest_grpc_and_protobuf_we_admit() -> None:
    # The stamps are runtime checks: grpcio or protobuf older than them refuses to import the
    # module, so a user with the oldest versions pyproject.toml admits must pass them.
    transport = SRC / "pollinate" / "transport"
    grpc_stamp = _GRPC_STAMP.search((transport / "fleet_pb2_grpc.py").read_text())
    protobuf_stamp = _PROTOBUF_STAMP.search((transport / "fleet_pb2.py").read_text())
    assert grpc_stamp and protobuf_stamp
    assert _version(grpc_stamp[1]) <= _minimum("grpcio"), "raise grpcio>= in pyproject.toml"
    assert _version(protobuf_stamp[1]) <= _minimum("protobuf"), "raise protobuf>= in pyproject"


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
