"""The pinned packages work together where the deployment needs them (the Compose stack runs the CeleryExecutor)."""

from __future__ import annotations

import importlib


def test_celery_executor_imports_with_the_pinned_celery() -> None:
    """apache-airflow-providers-celery 3.26.0 imports ``celery.backends.database.retry``, which celery 5.7 dropped."""
    module = importlib.import_module("airflow.providers.celery.executors.celery_executor")
    assert module.CeleryExecutor.__name__ == "CeleryExecutor"
