"""dispatcher: a dynamic-dispatch HTTP router for per-environment worker namespaces."""

from dispatcher._compiled import load_source_if_asked

load_source_if_asked()  # before any compiled module is imported


from dispatcher.errors import (  # noqa: E402
    BadRequest,
    ConfigError,
    DispatcherError,
    RequestError,
    ServiceNotFound,
    StoreError,
    WorkerNotDeployed,
)
from dispatcher.routing import Route, RouteMatch, RouteTable, RoutingConfig  # noqa: E402

__all__ = [
    "BadRequest",
    "ConfigError",
    "DispatcherError",
    "RequestError",
    "Route",
    "RouteMatch",
    "RouteTable",
    "RoutingConfig",
    "ServiceNotFound",
    "StoreError",
    "WorkerNotDeployed",
    "__version__",
]

__version__ = "0.1.0"
