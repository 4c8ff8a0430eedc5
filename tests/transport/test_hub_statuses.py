"""Which gRPC statuses a node or the CLI reads as "the hub is away" (retry) and which as "the
hub said no" (``transport.client._translate``)."""

from __future__ import annotations

import grpc
import pytest

from pollinate.transport.client import HubRefused, HubUnavailable, _translate


class Status(grpc.RpcError):
    """An RpcError as gRPC raises one for a call that ended with ``code``."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"{self._code.name} at the hub"


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED],
)
def test_a_hub_that_is_away_slow_or_stopping_is_unavailable(code: grpc.StatusCode) -> None:
    """A hub that stops cancels the calls it serves (a node's heartbeat as the hub restarts):
    the node must retry, not take it for a refusal and give up."""
    assert isinstance(_translate(Status(code)), HubUnavailable)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ],
)
def test_an_answer_that_says_no_is_a_refusal(code: grpc.StatusCode) -> None:
    refused = _translate(Status(code))
    assert isinstance(refused, HubRefused) and code.name in str(refused)
