"""The poller's exception vocabulary, one small hierarchy per boundary.

Library errors (requests, docker, sqlite, yaml) are translated into these where they cross into the poller, with
`raise ... from e`, so the scheduler and the CLI only ever handle the classes below. No message carries a secret.
"""

from __future__ import annotations


class PollerError(Exception):
    """Base of everything the poller raises on purpose."""


class ConfigError(PollerError):
    """The configuration file is missing, unreadable or invalid; the message names the file and the key."""


# --- sources (GitHub, git remotes, Helm repositories) -------------------------------------------------------
class SourceError(PollerError):
    """A source could not be read this poll. The stored state is untouched; the next poll tries again."""


class SourceUnavailable(SourceError):
    """The server did not answer, or answered 5xx, after the retries the HTTP layer allows."""


class RateLimited(SourceError):
    """GitHub's primary or secondary rate limit: nothing may be sent to it before `resume_at` (epoch seconds)."""

    def __init__(self, message: str, resume_at: float):
        super().__init__(message)
        self.resume_at = resume_at


class SourceRejected(SourceError):
    """The server refused the request (401, 403 without rate limit, 404 on the repository...)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class MalformedResponse(SourceError):
    """The server answered with something that is not what its API promises (bad JSON, wrong shape)."""


# --- builds ----------------------------------------------------------------------------------------------
class BuildError(PollerError):
    """A build could not be carried out. The queue retries it up to `builds.retries` times, with backoff."""


class SourceFetchError(BuildError):
    """The source tree at the planned commit could not be fetched."""


class ImageBuildFailed(BuildError):
    """The engine ran the Dockerfile and a step failed (the engine's error message is kept)."""


class PushFailed(BuildError):
    """The registry refused or lost the push (auth, network, an error line in the push stream)."""


class EngineUnavailable(BuildError):
    """The Docker engine does not answer."""


class BuildTimeout(BuildError):
    """The build took longer than `builds.timeout_seconds`."""


# --- the Helm API (apply requests) --------------------------------------------------------------------------
class ApplyError(PollerError):
    """The Helm API did not accept an apply request."""


class ApplyUnavailable(ApplyError):
    """Connection refused, timeout or 5xx: retried with backoff, never dropped."""


class ApplyRejected(ApplyError):
    """400/401/403/404: a configuration problem; retried only after the configuration changes."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


# --- reports (commit statuses, notifications) ------------------------------------------------------------------
class ReportError(PollerError):
    """A commit status or a notification could not be delivered; the outbox row says what happens next."""


class ReportUnavailable(ReportError):
    """Connection refused, timeout, 5xx, a rate limit: sent again later (after `retry_after` when the server said).

    `shared`: it holds for every target of the channel (GitHub's rate limit belongs to the token)."""

    def __init__(self, message: str, retry_after: float | None = None, shared: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.shared = shared


class ReportRejected(ReportError):
    """The receiver refused it in a way a retry cannot fix (403/404/422, a Slack error): failed for good."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# --- the state database ---------------------------------------------------------------------------------------
class StateError(PollerError):
    """The state database cannot be opened, read or written; the message names the file and the problem."""


class ServeError(PollerError):
    """The daemon's HTTP endpoint cannot listen (port in use, address not available)."""


class OperatorError(PollerError):
    """An operator's command cannot be carried out (unknown repository or build, digest gone, already held...).

    Nothing was changed; the message says why.
    """
