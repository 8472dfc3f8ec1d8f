"""The background reconciler: a stoppable daemon thread that resumes the waiting Job every few seconds."""

from __future__ import annotations

import logging
import threading

from helm_api.errors import HelmApiError
from helm_api.logs import event_fields
from helm_api.service import ApplyService

log = logging.getLogger(__name__)


class Reconciler:
    """Calls ``service.reconcile()`` every ``interval`` seconds until stopped; a failed pass is logged only."""

    def __init__(self, service: ApplyService, interval: float) -> None:
        self.service = service
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="helm-api-reconciler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run_once(self) -> None:
        try:
            self.service.reconcile()
        except HelmApiError as e:
            fields = event_fields("reconcile.failed", error=type(e).__name__)
            log.warning("reconcile failed: %s", e.message, extra=fields)
        except Exception:  # noqa: BLE001 - a bug in one pass must not stop the reconciler for good
            log.exception("reconcile failed unexpectedly", extra=event_fields("reconcile.error"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)
