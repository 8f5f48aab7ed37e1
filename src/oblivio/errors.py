"""Errors a user can cause and fix.

Every user mistake raises an `OblivioError`: the CLI prints its message (what was
wrong, where, what to do) and exits non-zero, never a traceback.
"""
from __future__ import annotations


class OblivioError(ValueError):
    """A problem the user can fix; `str(err)` is the whole message."""

    exit_code = 2


class ConfigError(OblivioError):
    """params.yaml or mlflow.yaml is malformed."""


class WorkspaceError(OblivioError):
    """The current directory is not (or not yet) an Oblivio workspace."""


class DataError(OblivioError):
    """The input data is unreadable or does not match the declared schema."""


class ValidationFailed(DataError):
    """The Great Expectations suite rejected the batch; `report` lists each failure."""

    def __init__(self, message: str, report: list[dict]):
        super().__init__(message)
        self.report = report


class RequestError(OblivioError):
    """A deletion request is malformed or cannot be honoured."""


class NumericsError(OblivioError):
    """This process cannot reproduce the recorded weights bit for bit (other CPU path or library versions)."""

    exit_code = 4


class RequestRejected(RequestError):
    """A recorded request was refused (e.g. its ids match nothing); it stays in the ledger as rejected."""

    def __init__(self, message: str, request_id: str):
        super().__init__(message)
        self.request_id = request_id


class IdempotencyConflict(RequestError):
    """An Idempotency-Key was reused with a different request body (HTTP 409)."""


class IntegrityError(OblivioError):
    """Recorded state contradicts itself (checkpoint, ledger or certificate mismatch)."""

    exit_code = 3


class BackendError(OblivioError):
    """A configured backend (tracking server, object store, Prefect, Dask) is down or refuses us."""

    exit_code = 5
