"""The Flask application factory: settings, backend, service, metrics, reconciler and schedule wired in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from helm_api.api import HelmApiState, register
from helm_api.backend import JobBackend
from helm_api.config import Settings, load_settings
from helm_api.logs import event_fields
from helm_api.metrics import ApplyMetrics
from helm_api.reconciler import Reconciler
from helm_api.schedule import ApplySchedule
from helm_api.service import ApplyService

MAX_BODY_BYTES = 1024 * 1024


def build_backend(settings: Settings, api_client: Any = None) -> JobBackend:
    """The offline backend when an offline CronJob file is configured, else the Kubernetes one."""
    if settings.offline:
        from helm_api.offline import OfflineBackend

        assert settings.offline_cronjob_file is not None
        return OfflineBackend(
            settings.offline_cronjob_file, settings.namespace, settings.cronjob_name, settings.offline_jobs_dir
        )
    from helm_api.kube import KubernetesBackend, build_api_client

    return KubernetesBackend(api_client or build_api_client(settings), settings.namespace, settings.cronjob_name)


def create_app(
    test_config: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    api_client: Any = None,
    backend: JobBackend | None = None,
    start_reconciler: bool = True,
    start_schedule: bool | None = None,
) -> Flask:
    """Build the app. ``test_config`` is a mapping read like the environment (HELM_API_* keys), instead of
    os.environ; ``settings`` skips that step. ``api_client`` (a kubernetes ApiClient) or ``backend``
    replace the ones built from the settings. The reconciler thread starts unless ``start_reconciler`` is
    False; stop it with ``app.extensions["helm_api"].reconciler.stop()``. When HELM_API_SCHEDULE is set, the
    schedule's thread starts with the reconciler unless ``start_schedule`` says otherwise; stop it with
    ``app.extensions["helm_api"].schedule.stop()``."""
    app = Flask(__name__)
    app.json.sort_keys = False
    # A request body is a short JSON object: anything this big is refused (413, as JSON) before it is read.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    if test_config is not None:
        app.config.from_mapping(test_config)
    if settings is None:
        settings = load_settings(None if test_config is None else dict(test_config))
    app.config.from_mapping(HELM_API_SETTINGS=settings)

    backend = backend or build_backend(settings, api_client)
    metrics = ApplyMetrics()
    service = ApplyService(backend, metrics)
    reconciler = Reconciler(service, settings.reconcile_seconds)
    schedule = (
        ApplySchedule(service, settings.schedule, settings.schedule_timezone) if settings.schedule else None
    )
    register(app, HelmApiState(settings, backend, metrics, service, reconciler, schedule))
    if start_reconciler:
        reconciler.start()
    if schedule is not None and (start_reconciler if start_schedule is None else start_schedule):
        schedule.start()
    logging.getLogger(__name__).info(
        "helm-api ready: namespace=%s cronjob=%s offline=%s anonymous=%s schedule=%r",
        settings.namespace,
        settings.cronjob_name,
        settings.offline,
        settings.allow_anonymous,
        settings.schedule or "",
        extra=event_fields(
            "app.ready",
            namespace=settings.namespace,
            cronjob=settings.cronjob_name,
            offline=settings.offline,
            anonymous=settings.allow_anonymous,
            schedule=settings.schedule or "",
            schedule_timezone=settings.schedule_timezone,
        ),
    )
    return app

