"""One exception type for everything a peer can get wrong, carrying its gRPC status."""

from __future__ import annotations

import grpc


class WireError(Exception):
    """A rejected message or payload; `code` is the gRPC status the server answers with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def invalid(message: str) -> WireError:
    return WireError(grpc.StatusCode.INVALID_ARGUMENT, message)
