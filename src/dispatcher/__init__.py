"""dispatcher: a dynamic-dispatch HTTP router for per-environment worker namespaces."""

from dispatcher.errors import (
    BadRequest,
    ConfigError,
    DispatcherError,
    RequestError,
    ServiceNotFound,
    StoreError,
    WorkerNotDeployed,
)
from dispatcher.routing import Route, RouteMatch, RouteTable, RoutingConfig

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
