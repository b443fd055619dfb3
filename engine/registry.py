"""The model registry, for register: find or create the version of a logged model,
then publish it (description, card, tags, aliases). Aliases and tags only: no stages.

Every function is safe to repeat: a register killed half-way is completed by the
next one, which finds the version it created instead of creating another.

A version is created from its logged model (`models:/m-...`): its source is that URI,
which MLflow's version page links as "Source Model", and the logged model lists the
version in its `mlflow.modelVersions` tag, which the logged model's page shows beside its
metrics. `ModelVersion.model_id` stays None on this project's stores: MLflow's SQL
registry (SQLite, PostgreSQL) accepts a model_id and keeps no column for it.
"""

from __future__ import annotations

import json
from typing import Optional

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

TAG_PRIMARY_VALUE = "primary_metric_value"


def version_by_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def model_id_of(model_uri: str) -> str:
    """The logged model's id in its URI, models:/m-... (what train records)."""
    return model_uri.rsplit("/", 1)[-1]


def version_of(client: MlflowClient, name: str, train_run_id: str, model_uri: str):
    """The version already registered for this logged model, or None."""
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{train_run_id}'")
    except MlflowException:  # no such registered model yet
        return None
    model_id = model_id_of(model_uri)
    # model_id is None where the registry does not keep it (see above): one train run logs one model.
    mine = [v for v in versions if getattr(v, "model_id", None) in (None, model_id)]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def create_version(name: str, model_uri: str, tags: dict[str, str]):
    """A new version of `name` from the logged model `model_uri` (models:/m-...)."""
    return mlflow.register_model(model_uri, name, tags=tags)


def versions_listed(tag_value: Optional[str], name: str, version: str) -> Optional[str]:
    """The logged model's `mlflow.modelVersions` tag with (name, version) in it, or None when it
    is listed already. MLflow writes the version as a number, its server as either."""
    listed = json.loads(tag_value) if tag_value else []
    if any(entry.get("name") == name and str(entry.get("version")) == str(version) for entry in listed):
        return None
    return json.dumps(listed + [{"name": name, "version": int(version)}])


def link_to_logged_model(client: MlflowClient, name: str, version: str, model_uri: str) -> None:
    """List the version on its logged model. mlflow.register_model does so after creating the
    version: a register killed in between leaves a version its logged model does not show,
    and the next register, finding that version, completes it here."""
    model_id = model_id_of(model_uri)
    tag = versions_listed(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS), name, version)
    if tag is not None:
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: tag})


def publish(client: MlflowClient, name: str, version: str, model_uri: str, tags: dict[str, str], description: str,
            aliases: list[str]) -> None:
    """Write what a complete version carries; each write replaces, so repeating is harmless."""
    link_to_logged_model(client, name, version, model_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=description)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)


def champion_value(version) -> Optional[float]:
    value = version.tags.get(TAG_PRIMARY_VALUE) if version is not None else None
    return float(value) if value is not None else None
