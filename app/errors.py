"""The one error envelope, {"error": {"message", "type", "param", "code"}}, and the handlers that
turn every failure (validation, routing, engine, anything unexpected) into it."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.excerpts import bounded_message, excerpt
from app.schemas.common import ErrorDetail, ErrorResponse
from app.validation import describe_validation_errors, unparsable_body
from model_runtime import EngineError

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"

# Seconds a client is told to wait after a 429 or 503.
RETRY_AFTER_S = 1


class APIError(Exception):
    """An error answered to the client as is: status, envelope and optional headers."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = dict(headers or {})

    def envelope(self) -> ErrorResponse:
        return ErrorResponse(error=self.detail)

    def to_response(self) -> Response:
        return Response(
            self.envelope().model_dump_json(),
            status_code=self.status_code,
            headers=self.headers,
            media_type="application/json",
        )


def model_not_found(model: str) -> APIError:
    # OpenAI answers an unknown model with 404, type invalid_request_error, code model_not_found.
    return APIError(
        404,
        f"The model `{excerpt(model)}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def engine_error(exc: EngineError) -> APIError:
    """An engine error is always the client's doing (see model_runtime.api.EngineError)."""
    return APIError(400, bounded_message(str(exc)), param=exc.param, code=exc.code)


def server_error(message: str, code: str = "internal_error", status_code: int = 500) -> APIError:
    return APIError(status_code, message, type=SERVER_ERROR, code=code)


def engine_unavailable() -> APIError:
    error = server_error("The model is not loaded or the engine has stopped.", "engine_unavailable", 503)
    error.headers["Retry-After"] = str(RETRY_AFTER_S)
    return error


def invalid_api_key() -> APIError:
    # OpenAI's answer to a missing or wrong key: 401, invalid_request_error, invalid_api_key.
    return APIError(
        401,
        "Incorrect API key provided. Send it as 'Authorization: Bearer YOUR_KEY'.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def rate_limited(message: str, kind: str) -> APIError:
    """429 as OpenAI sends it: `type` says which limit ("requests" or "tokens")."""
    return APIError(
        429, message, type=kind, code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def not_ready(message: str) -> APIError:
    error = server_error(message, "server_not_ready", 503)
    error.headers["Retry-After"] = str(RETRY_AFTER_S)
    return error


def payload_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than {limit} bytes.", code="request_too_large")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.to_response()


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    described = describe_validation_errors(exc.errors(), exc.body)
    return APIError(400, described.message, param=described.param, code=described.code).to_response()


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    return engine_error(exc).to_response()


FASTAPI_UNREADABLE_BODY = "There was an error parsing the body"


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        error = APIError(404, f"Invalid URL ({excerpt(where)})", code="not_found")
    elif exc.status_code == 405:
        error = APIError(
            405, f"Method not allowed ({excerpt(where)})", code="method_not_allowed", headers=exc.headers
        )
    elif exc.status_code == 400 and exc.detail == FASTAPI_UNREADABLE_BODY:
        # A body json.loads raised on with something other than a syntax error: bytes that are
        # not UTF-8 (a compressed body), or nesting deeper than the parser recurses.
        described = unparsable_body()
        error = APIError(400, described.message, param=described.param, code=described.code)
    else:
        # FastAPI's own 4xx: keep the status, wrap the detail.
        error_type = INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR
        error = APIError(exc.status_code, excerpt(str(exc.detail), 200), type=error_type, headers=exc.headers)
    return error.to_response()


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback and re-raises after this response is sent.
    return server_error("The server had an error while processing your request.").to_response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
