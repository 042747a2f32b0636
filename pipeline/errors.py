"""The exception that carries a Paddle Serving 0.9 err_no (the codes are a wire fact: protocol/wire.py)."""

from __future__ import annotations

from resnest_serving.protocol.wire import ErrorCode

__all__ = ["ErrorCode", "PipelineError"]


class PipelineError(Exception):
    """An error with a Paddle Serving err_no and a message a user can act on."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    def __str__(self) -> str:
        return f"[{int(self.code)} {self.code.name}] {self.message}"
