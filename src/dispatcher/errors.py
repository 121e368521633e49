"""The exception tree of the dispatcher; every HTTP-facing error knows its status and body.

```
DispatcherError
├── ConfigError                 startup only; CLI exit 2
├── RequestError                rendered by the Dispatcher as JSON
│   ├── ServiceNotFound    404  {"error": "Service not found", "message", "available_services"}
│   ├── WorkerNotDeployed  404  {"error": "Service not deployed", "message", "hint"}
│   ├── NamespaceMissing   500  {"error": "Configuration error", "message"}
│   └── BadRequest         400  malformed request head (Host, path, framing)
│       ├── HeadersTooLarge     431
│       ├── UriTooLong          414
│       ├── RequestTimeout      408
│       ├── PayloadTooLarge     413
│       ├── ExpectationFailed   417
│       ├── MethodNotAllowed    405
│       ├── NotImplementedCoding 501
│       └── VersionNotSupported 505
├── ApiError                    rendered by the Deploy API (admin.py) as JSON, naming the field
│   ├── InvalidRequest     400  bad name, body not JSON, unknown query parameter
│   ├── Unauthorized       401  missing or unknown bearer token (WWW-Authenticate: Bearer)
│   ├── Forbidden          403  token lacks the scope or the namespace
│   ├── NotFound           404  unknown route, namespace or worker
│   ├── WrongMethod        405  route exists, method does not (Allow)
│   ├── Conflict           409  namespace not empty, nothing to roll back
│   ├── ValidationFailed   422  well-formed JSON that breaks the schema
│   ├── TooManyFailures    429  too many failed logins from one address (Retry-After)
│   └── Unavailable        503  the store is unavailable (Retry-After)
├── AdminClientError            the CLI's admin API call failed (admin_client.py)
│   └── AdminUnreachable        no HTTP answer at all (refused, timed out, not HTTP)
├── ListenFailed                a listener could not bind its address
└── StoreError                  the registry store failed (mapped from sqlite3 in store/ only)
    ├── StoreUnavailable        unreachable, or locked past its bound (retryable)
    ├── NamespaceNotFound
    ├── NamespaceNotEmpty
    ├── WorkerNotFound
    └── NothingToRollBack       the current version has no previous version
```

Unexpected exceptions become the seed's 500 ``{"error": "Internal server error", ...}``
with an error id that is also written to the log.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from dispatcher import outcomes


class DispatcherError(Exception):
    """Base of every error the dispatcher raises on purpose."""


class ConfigError(DispatcherError):
    """Configuration is invalid; raised at startup (or reload), never per request."""


class StoreError(DispatcherError):
    """The registry store failed; the message says which operation."""


class RequestError(DispatcherError):
    """An error answered to the client as a JSON body with a fixed status."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    code: ClassVar[str] = "bad_request"
    outcome: ClassVar[int] = outcomes.BAD_REQUEST
    headers: ClassVar[list[tuple[bytes, bytes]]] = []
    """Extra response headers the answer carries (``Retry-After`` on a 503)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def fields(self) -> dict[str, Any]:
        """The JSON body's fields, in the seed's order (``error`` then ``message``)."""
        return {"error": self.title, "message": self.message, "code": self.code}

    def body(self, request_id: str | None = None) -> bytes:
        """The response body, UTF-8 JSON; ``request_id`` is added when known."""
        fields = self.fields()
        if request_id is not None:
            fields["request_id"] = request_id
        return json.dumps(fields).encode()


class ServiceNotFound(RequestError):
    """No route matched the request's host and path."""

    status = 404
    title = "Service not found"
    code = "service_not_found"
    outcome = outcomes.SERVICE_NOT_FOUND

    def __init__(self, host: str, path: str, available_services: tuple[str, ...]) -> None:
        super().__init__(f"No worker found for {host}{path}")
        self.available_services = available_services

    def fields(self) -> dict[str, Any]:
        return {
            "error": self.title,
            "message": self.message,
            "available_services": list(self.available_services),
            "code": self.code,
        }


class WorkerNotDeployed(RequestError):
    """A route matched, but the namespace holds no worker of that name."""

    status = 404
    title = "Service not deployed"
    code = "not_deployed"
    outcome = outcomes.NOT_DEPLOYED
    hint: ClassVar[str] = "Service may not be deployed yet. Deploy via Deploy API."

    def __init__(self, worker: str, environment: str) -> None:
        super().__init__(f'Worker "{worker}" not found in {environment} namespace')

    def fields(self) -> dict[str, Any]:
        return {"error": self.title, "message": self.message, "hint": self.hint, "code": self.code}


class NamespaceMissing(RequestError):
    """The environment's namespace is not bound, or has vanished from the store."""

    status = 500
    title = "Configuration error"
    code = "config_error"
    outcome = outcomes.CONFIG_ERROR

    def __init__(self, environment: str) -> None:
        super().__init__(f"Namespace not found for environment: {environment}")


class InternalError(RequestError):
    """Anything unexpected; the message carries an error id that is also logged."""

    status = 500
    title = "Internal server error"
    code = "internal_error"
    outcome = outcomes.INTERNAL_ERROR


class Overloaded(RequestError):
    """Over the in-flight or connection limit: a fast 503 the client may retry."""

    status = 503
    title = "Service unavailable"
    code = "overloaded"
    outcome = outcomes.OVERLOADED
    headers: ClassVar[list[tuple[bytes, bytes]]] = [(b"retry-after", b"1")]


class BadRequest(RequestError):
    """The request head is malformed; the connection is closed after the answer."""


class HeadersTooLarge(BadRequest):
    status = 431
    title = "Request header fields too large"
    code = "headers_too_large"


class UriTooLong(BadRequest):
    status = 414
    title = "URI too long"
    code = "uri_too_long"


class RequestTimeout(BadRequest):
    status = 408
    title = "Request timeout"
    code = "request_timeout"


class PayloadTooLarge(BadRequest):
    status = 413
    title = "Payload too large"
    code = "payload_too_large"


class ExpectationFailed(BadRequest):
    status = 417
    title = "Expectation failed"
    code = "expectation_failed"


class MethodNotAllowed(BadRequest):
    status = 405
    title = "Method not allowed"
    code = "method_not_allowed"


class NotImplementedCoding(BadRequest):
    status = 501
    title = "Not implemented"
    code = "not_implemented"


class VersionNotSupported(BadRequest):
    status = 505
    title = "HTTP version not supported"
    code = "version_not_supported"


class StoreUnavailable(StoreError):
    """The store could not be reached or stayed locked past its bound; retryable."""


class NamespaceNotFound(StoreError):
    """The namespace does not exist in the store."""


class NamespaceNotEmpty(StoreError):
    """The namespace still holds workers and deletion was not forced."""


class WorkerNotFound(StoreError):
    """No worker of that name is deployed in the namespace."""


class NothingToRollBack(StoreError):
    """The worker's current version has no previous version to return to."""


class ListenFailed(DispatcherError):
    """A listener could not bind its address; the message names the address and the reason."""


class ApiError(DispatcherError):
    """An error the Deploy API answers as ``{"error", "message", "code"[, "field"]}``.

    ``field`` names the offending input (``url``, ``metadata.commit``, ``namespace``) when
    there is one; ``headers`` are added to the response (``WWW-Authenticate``, ``Allow``).
    """

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    code: ClassVar[str] = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers

    def fields(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.title, "message": self.message, "code": self.code}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidRequest(ApiError):
    status = 400
    title = "Bad request"
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    title = "Unauthorized"
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    title = "Not found"
    code = "not_found"


class WrongMethod(ApiError):
    status = 405
    title = "Method not allowed"
    code = "method_not_allowed"


class Conflict(ApiError):
    status = 409
    title = "Conflict"
    code = "conflict"


class ValidationFailed(ApiError):
    status = 422
    title = "Validation failed"
    code = "validation_failed"


class TooManyFailures(ApiError):
    status = 429
    title = "Too many requests"
    code = "too_many_failures"


class Unavailable(ApiError):
    status = 503
    title = "Service unavailable"
    code = "unavailable"


class AdminClientError(DispatcherError):
    """An admin API call failed; ``status`` is the HTTP status (0 when none came back)."""

    def __init__(self, message: str, *, status: int = 0, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class AdminUnreachable(AdminClientError):
    """The admin API gave no HTTP answer: refused, timed out, or not speaking HTTP."""
