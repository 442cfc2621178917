"""The API's error replies: every expected failure is an ``ApiError`` -> JSON
``{"error": code, "message": ...}`` with its HTTP status; bad input is 4xx, never a 500."""

from __future__ import annotations

from fastapi import Response

from service import schemas

JSON = "application/json"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra

    def response(self) -> Response:
        body = schemas.encode({"error": self.code, "message": self.message, **self.extra})
        return Response(body, status_code=self.status, headers=self.headers, media_type=JSON)
