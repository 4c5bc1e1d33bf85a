"""omnisdk: one customer, one cart, one consent state across a shop's web, app and tills."""

import logging as _logging

from omnisdk._async import AsyncClient
from omnisdk._base import RetryPolicy
from omnisdk._sync import Client
from omnisdk._version import __version__
from omnisdk.core.channels import Channel, Scope
from omnisdk.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    ConfirmationTokenError,
    ConflictError,
    ConsentTransitionError,
    IdempotencyError,
    InvalidRequestError,
    NotFoundError,
    OfflineLimitReached,
    OmnisdkError,
    OutboxFull,
    OutboxWriteError,
    PermissionDeniedError,
    RateLimitedError,
    ReturnRefused,
    ServerError,
    UnknownPurposeError,
    ValidationError,
)

# A library leaves logging to the application (the logging HOWTO's advice): without this, a
# warning of ours would print as a bare line through logging's last-resort handler. Configure
# the "omnisdk" logger (or the root logger) to see them, named and levelled.
_logging.getLogger("omnisdk").addHandler(_logging.NullHandler())

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "Channel",
    "Client",
    "ClientClosedError",
    "ConfigurationError",
    "ConfirmationTokenError",
    "ConflictError",
    "ConsentTransitionError",
    "IdempotencyError",
    "InvalidRequestError",
    "NotFoundError",
    "OfflineLimitReached",
    "OmnisdkError",
    "OutboxFull",
    "OutboxWriteError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RetryPolicy",
    "ReturnRefused",
    "Scope",
    "ServerError",
    "UnknownPurposeError",
    "ValidationError",
    "__version__",
]
