"""The model registry, for register: find or create the version of a logged model,
then publish it (description, card, tags, aliases). Aliases and tags only: no stages.

Every function is safe to repeat: a register killed half-way is completed by the
next one, which finds the version it created instead of creating another.
"""

from __future__ import annotations

from typing import Optional

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

TAG_PRIMARY_VALUE = "primary_metric_value"


def version_by_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_of(client: MlflowClient, name: str, train_run_id: str, model_uri: str):
    """The version already registered for this logged model, or None."""
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{train_run_id}'")
    except MlflowException:  # no such registered model yet
        return None
    model_id = model_uri.rsplit("/", 1)[-1]
    mine = [v for v in versions if getattr(v, "model_id", None) in (None, model_id)]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def create_version(name: str, model_uri: str, tags: dict[str, str]):
    return mlflow.register_model(model_uri, name, tags=tags)


def publish(client: MlflowClient, name: str, version: str, tags: dict[str, str], description: str,
            aliases: list[str]) -> None:
    """Write what a complete version carries; each write replaces, so repeating is harmless."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=description)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)


def champion_value(version) -> Optional[float]:
    value = version.tags.get(TAG_PRIMARY_VALUE) if version is not None else None
    return float(value) if value is not None else None
