"""The bundle registry on an MLflow model registry, for sites that already run MLflow (the optional `mlflow` extra).

The same methods as the folder registry (`BundleRegistry`), mapped onto MLflow's own objects so its UI shows them:

- a model is a registered model; a version is a model version, whose run holds the artifacts `bundle/` (the bundle,
  sealed again by `save_bundle` as in the folder registry) and `provenance.json`; metrics added later are the
  version's tag `ae_monitor.metrics` (artifacts never change);
- an alias is an MLflow alias (`set_registered_model_alias`, one write on the server: readers see the old version or
  the new one); its history, which MLflow does not keep, is the registered model's tag `ae_monitor.alias.<name>`
  (`previous` for rollback, the last MOVES_KEPT `moves`).

Versions are downloaded into `cache_dir/<model>/<version>/` (a temporary sibling, then a rename) once: a version
never changes, so a reload check costs one request for the alias. Writers are not serialised: MLflow numbers
concurrent registrations itself, but two promotions of one alias at once may lose one entry of its history.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ae_monitor.errors import RegistryError
from ae_monitor.model.bundle import export_onnx, save_bundle
from ae_monitor.registry import (
    BUNDLE,
    PROVENANCE,
    Alias,
    Version,
    alias_move,
    check_name,
    checked_bundle,
    provenance,
    write_json,
)

# MLflow draws a progress bar on stderr for every download unless told not to: serve's reloads would draw them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

EXPERIMENT = "ae-monitor-registry"
METRICS_TAG = "ae_monitor.metrics"
ALIAS_TAG = "ae_monitor.alias."
MOVES_KEPT = 50  # a tag value is limited in size (5000 characters on older servers): the newest moves are kept


class MlflowRegistry:
    """The MLflow model registry at `tracking_uri` (an `mlflow server`), with downloads cached in `cache_dir`."""

    def __init__(self, tracking_uri: str, *, cache_dir: str | Path, environ: Mapping[str, str] | None = None) -> None:
        self.root = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._cache = Path(cache_dir)
        self._environ = environ

    # --- reading ---------------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted(m.name for m in self._call(lambda: self._client.search_registered_models(max_results=1000)))

    def versions(self, model: str) -> list[Version]:
        check_name(model, model=model)
        found = self._call(lambda: self._client.search_model_versions(f"name='{model}'"), model=model)
        if not found:
            raise RegistryError(f"no such model in the MLflow registry at {self.root}", model=model)
        return [self.version(model, n) for n in sorted(int(v.version) for v in found)]

    def version(self, model: str, number: int) -> Version:
        found = self._model_version(model, number)
        folder = self._cache / model / str(number)
        if not (folder / PROVENANCE).is_file():
            staging = folder / f".{PROVENANCE}.{secrets.token_hex(4)}"
            try:
                Path(self._download(found.run_id, PROVENANCE, model=model, into=staging)).replace(folder / PROVENANCE)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        record = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
        added = json.loads(found.tags.get(METRICS_TAG, "{}"))
        return Version(model, number, folder, {**record, "metrics": {**record.get("metrics", {}), **added}})

    def aliases(self, model: str) -> dict[str, Alias]:
        names = self._registered(model).aliases
        return {name: self.alias(model, name) for name in sorted(names)}

    def alias(self, model: str, name: str) -> Alias:
        found = self._registered(model)
        if name not in found.aliases:
            raise RegistryError(f"no such alias in the MLflow registry at {self.root}", model=model, alias=name)
        history = json.loads(found.tags.get(ALIAS_TAG + name, '{"previous": [], "moves": []}'))
        return Alias(model, name, int(found.aliases[name]), tuple(int(v) for v in history["previous"]),
                     tuple(history["moves"]))  # fmt: skip

    def resolve(self, model: str, alias: str) -> Version:
        """The version `alias` names, its bundle downloaded (once) into the cache."""
        version = self.version(model, self.alias(model, alias).version)
        if not version.bundle_path.is_dir():
            run_id = self._model_version(model, version.number).run_id
            staging = version.path / f".{BUNDLE}.{secrets.token_hex(4)}"
            try:
                fetched = self._download(run_id, BUNDLE, model=model, into=staging)
                try:
                    Path(fetched).rename(version.bundle_path)
                except OSError:  # another process downloaded it first: theirs is the same bundle
                    if not version.bundle_path.is_dir():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return version

    # --- writing ---------------------------------------------------------------------------------------------

    def register(
        self,
        model: str,
        bundle_dir: str | Path,
        *,
        parent: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        data_span: tuple[str, str] | None = None,
        note: str | None = None,
        by: str | None = None,
    ) -> Version:
        """Log the bundle at `bundle_dir` (checked as serve would load it) as a run and register it as the next
        model version of `model`."""
        check_name(model, model=model)
        source = Path(bundle_dir)
        if parent is not None:
            self._model_version(model, parent)
        bundle, manifest = checked_bundle(model, source, environ=self._environ)
        with tempfile.TemporaryDirectory(prefix="ae-monitor-register-") as tmp:
            staged = save_bundle(bundle, Path(tmp) / BUNDLE, environ=self._environ)
            if manifest.get("onnx"):
                export_onnx(staged, environ=self._environ)
            self._ensure_model(model)
            run = self._call(lambda: self._client.create_run(self._experiment(), tags={"ae_monitor.model": model}))
            run_id = run.info.run_id
            self._call(lambda: self._client.log_artifacts(run_id, str(staged), artifact_path=BUNDLE), model=model)
            created = self._call(lambda: self._client.create_model_version(
                model, f"{run.info.artifact_uri}/{BUNDLE}", run_id=run_id, description=note), model=model)  # fmt: skip
            number = int(created.version)
            record = provenance(model, number, source, bundle, manifest, parent=parent, metrics=metrics,
                                data_span=data_span, note=note, by=by)  # fmt: skip
            write_json(Path(tmp) / PROVENANCE, record)
            self._call(lambda: self._client.log_artifact(run_id, str(Path(tmp) / PROVENANCE)), model=model)
            self._call(lambda: self._client.set_terminated(run_id))
        return self.version(model, number)

    def add_metrics(self, model: str, number: int, metrics: Mapping[str, Any]) -> Version:
        current = json.loads(self._model_version(model, number).tags.get(METRICS_TAG, "{}"))
        value = json.dumps({**current, **metrics}, sort_keys=True)
        self._call(lambda: self._client.set_model_version_tag(model, str(number), METRICS_TAG, value), model=model)
        return self.version(model, number)

    def promote(
        self, model: str, number: int, alias: str, *, by: str | None = None, reason: str | None = None
    ) -> Alias:
        check_name(alias, model=model, alias=alias)
        self._model_version(model, number)
        found = self._registered(model)
        current = self.alias(model, alias) if alias in found.aliases else None
        if current is not None and current.version == number:
            raise RegistryError(f"already names version {number}", model=model, alias=alias)
        before = None if current is None else current.version
        previous = () if current is None else (*current.previous, current.version)
        moves = () if current is None else current.moves
        self._move(model, alias, number, previous, (*moves, alias_move("promote", before, number, by, reason)))
        return self.alias(model, alias)

    def rollback(self, model: str, alias: str, *, by: str | None = None, reason: str | None = None) -> Alias:
        current = self.alias(model, alias)
        if not current.previous:
            raise RegistryError(f"has no earlier version to roll back to (it names version {current.version})",
                                model=model, alias=alias)  # fmt: skip
        target = current.previous[-1]
        move = alias_move("rollback", current.version, target, by, reason)
        self._move(model, alias, target, current.previous[:-1], (*current.moves, move))
        return self.alias(model, alias)

    # --- inside ----------------------------------------------------------------------------------------------

    def _move(self, model: str, alias: str, number: int, previous: tuple[int, ...],
              moves: tuple[Mapping[str, Any], ...]) -> None:  # fmt: skip
        history = json.dumps({"previous": list(previous), "moves": list(moves[-MOVES_KEPT:])}, sort_keys=True)
        # The history first: should the alias write fail, a rollback still finds the version it names now.
        self._call(lambda: self._client.set_registered_model_tag(model, ALIAS_TAG + alias, history), model=model)
        self._call(lambda: self._client.set_registered_model_alias(model, alias, str(number)), model=model)

    def _registered(self, model: str) -> Any:
        try:
            return self._client.get_registered_model(model)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"no such model in the MLflow registry at {self.root}", model=model) from exc
            raise RegistryError(f"MLflow at {self.root}: {exc.message}", model=model) from exc

    def _model_version(self, model: str, number: int) -> Any:
        try:
            return self._client.get_model_version(model, str(number))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"no such version in the MLflow registry at {self.root}", model=model,
                                    version=number) from exc  # fmt: skip
            raise RegistryError(f"MLflow at {self.root}: {exc.message}", model=model, version=number) from exc

    def _ensure_model(self, model: str) -> None:
        try:
            self._client.get_registered_model(model)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"MLflow at {self.root}: {exc.message}", model=model) from exc
            self._call(lambda: self._client.create_registered_model(model), model=model)

    def _experiment(self) -> str:
        found = self._call(lambda: self._client.get_experiment_by_name(EXPERIMENT))
        return str(found.experiment_id) if found is not None else str(self._client.create_experiment(EXPERIMENT))

    def _download(self, run_id: str, path: str, *, model: str, into: Path) -> str:
        into.mkdir(parents=True, exist_ok=True)
        return str(self._call(lambda: self._client.download_artifacts(run_id, path, str(into)), model=model))

    def _call(self, action: Any, *, model: str = "(any)") -> Any:
        try:
            return action()
        except MlflowException as exc:
            raise RegistryError(f"MLflow at {self.root}: {exc.message}", model=model) from exc
