"""The helm_api exception hierarchy: every error a client can see, with its HTTP status and JSON details.

Library exceptions (kubernetes ApiException, urllib3 errors, yaml errors) are translated into these at the
boundary that calls the library, with ``raise ... from e``; the one Flask error handler turns them into JSON.
"""

from __future__ import annotations

from typing import Any


class HelmApiError(Exception):
    """Base class: an error with a client-facing message, HTTP status and extra JSON fields."""

    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}


class ConfigError(HelmApiError):
    """Configuration from the environment or files is missing or wrong (raised at start)."""


class BadRequestError(HelmApiError):
    status = 400


class UnauthorizedError(HelmApiError):
    status = 401


class NotFoundError(HelmApiError):
    status = 404


class CronJobNotFoundError(NotFoundError):
    """The configured CronJob does not exist."""


class JobNotFoundError(NotFoundError):
    """No apply Job has that name."""


class InvalidCronJobError(HelmApiError):
    """The CronJob cannot be turned into a Job (not batch/v1, no jobTemplate, ...)."""

    status = 502


class BackendError(HelmApiError):
    """The Kubernetes API (or the offline store) failed in a way the client cannot fix."""

    status = 502


class BackendUnavailableError(BackendError):
    """The API server cannot be reached or answers 5xx/429."""

    status = 503


class ForbiddenError(BackendError):
    """The service account lacks a permission; the message names it."""

    status = 502


class AlreadyExistsError(BackendError):
    """Create of a name that exists (409 AlreadyExists). Internal: the planner re-lists and decides again."""

    status = 409


class ConflictError(BackendError):
    """Stale resourceVersion (409 Conflict). Internal: the planner re-lists and decides again."""

    status = 409


class BusyError(HelmApiError):
    """The apply loop kept losing races and gave up; the client may retry."""

    status = 503


class NotReadyError(HelmApiError):
    """/readyz: the API server or the CronJob cannot be reached; the details say which."""

    status = 503
