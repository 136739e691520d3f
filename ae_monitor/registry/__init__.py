"""The bundle registry: numbered versions of each model's bundle, aliases that name one of them, and provenance.

A stage beside model/: it stores bundles with the bundle module's own `save_bundle` (sealed, signed when a key is
set) and checks them with `load_bundle`. Two backends with the same methods: `Registry`, a folder (here), and
`MlflowRegistry`, an MLflow model registry (mlflow_backend.py, the optional `mlflow` extra); `open_registry` picks
one from the root (a folder, or an MLflow tracking server's http(s) URL).

Layout under a folder root (a local disk, a shared volume, a Kubernetes PersistentVolumeClaim)::

    <root>/<model>/
      <N>/bundle/             version N's bundle (manifest.json, weights.safetensors, ...), never changed again
      <N>/provenance.json     where it came from: training files and data span, calibration summary, parent
                              version, free-form metrics (a shadow period's results), who registered it and when
      aliases/<alias>.json    the version the alias names, the versions it named before (for rollback) and
                              every move, with who and when
      .lock                   serialises writers (flock); readers never take it

Every write is a temporary sibling and a rename: a version folder appears whole (its bundle and provenance staged
first), and an alias file is replaced by `os.replace`, so a reader, say serve on another node of a shared volume,
sees the old target or the new one and never half a file. Version numbers are 1, 2, 3, ... per model.

    >>> registry = Registry("/srv/models")                                      # doctest: +SKIP
    >>> v = registry.register("pump", "bundles/pump", parent=2, metrics={"f1": 0.9})  # doctest: +SKIP
    >>> registry.promote("pump", v.number, "production")                        # doctest: +SKIP
    >>> registry.rollback("pump", "production")                                 # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ae_monitor.config import REGISTRY_NAME, REGISTRY_SCHEME, parse_registry_ref
from ae_monitor.errors import BundleError, RegistryError
from ae_monitor.model.bundle import MANIFEST, load_bundle, save_bundle

if TYPE_CHECKING:
    from ae_monitor.model.bundle import Bundle

BUNDLE = "bundle"
PROVENANCE = "provenance.json"
ALIASES = "aliases"
PROVENANCE_SCHEMA = 1


@dataclass(frozen=True)
class Version:
    """One registered version: its folder and its provenance record (plain JSON types)."""

    model: str
    number: int
    path: Path
    provenance: Mapping[str, Any]

    @property
    def bundle_path(self) -> Path:
        return self.path / BUNDLE


@dataclass(frozen=True)
class Alias:
    """An alias of a model: the version it names now, and the ones it named before (the last is rollback's)."""

    model: str
    name: str
    version: int
    previous: tuple[int, ...]
    moves: tuple[Mapping[str, Any], ...]


class BundleRegistry(Protocol):
    """What both backends do (the CLI and serve use only this)."""

    def models(self) -> list[str]: ...
    def versions(self, model: str) -> list[Version]: ...
    def version(self, model: str, number: int) -> Version: ...
    def aliases(self, model: str) -> dict[str, Alias]: ...
    def alias(self, model: str, name: str) -> Alias: ...
    def resolve(self, model: str, alias: str) -> Version: ...
    def register(self, model: str, bundle_dir: str | Path, *, parent: int | None = None,
                 metrics: Mapping[str, Any] | None = None, data_span: tuple[str, str] | None = None,
                 note: str | None = None, by: str | None = None) -> Version: ...  # fmt: skip
    def add_metrics(self, model: str, number: int, metrics: Mapping[str, Any]) -> Version: ...
    def promote(self, model: str, number: int, alias: str, *, by: str | None = None,
                reason: str | None = None) -> Alias: ...  # fmt: skip
    def rollback(self, model: str, alias: str, *, by: str | None = None, reason: str | None = None) -> Alias: ...


def open_registry(root: str | Path, *, environ: Mapping[str, str] | None = None) -> BundleRegistry:
    """The registry at `root`: an MLflow tracking server for an http(s) URL, else a folder.

    An MLflow registry downloads the versions it resolves into `AE_MONITOR_REGISTRY_CACHE` (in `environ`, default
    the process environment), else `<temp dir>/ae-monitor-registry`."""
    text = str(root)
    if text.startswith(("http://", "https://")):
        from ae_monitor.registry.mlflow_backend import MlflowRegistry

        env = os.environ if environ is None else environ
        cache = env.get("AE_MONITOR_REGISTRY_CACHE") or str(Path(tempfile.gettempdir()) / "ae-monitor-registry")
        return MlflowRegistry(text, cache_dir=cache, environ=environ)
    return Registry(root, environ=environ)


@dataclass(frozen=True)
class AliasRef:
    """`registry://<root>/<model>@<alias>`, the way a route names a bundle by alias (config.parse_registry_ref).
    `root` is a folder or an MLflow tracking URL (`registry://http://mlflow:5000/pump@production`)."""

    root: str
    model: str
    alias: str

    @staticmethod
    def parse(text: str) -> AliasRef | None:
        """The reference in `text`, or None for a plain bundle path (config validation refused malformed ones)."""
        found = parse_registry_ref(text)
        return None if found is None else AliasRef(*found)

    def resolve(self) -> Path:
        """The bundle folder of the version the alias names now; RegistryError when there is none."""
        return open_registry(self.root).resolve(self.model, self.alias).bundle_path

    def __str__(self) -> str:
        return f"{REGISTRY_SCHEME}{self.root}/{self.model}@{self.alias}"


def bundle_location(ref: Path | AliasRef) -> Path:
    """The bundle folder `ref` stands for now: a plain path is itself, an alias is resolved."""
    return ref.resolve() if isinstance(ref, AliasRef) else ref


class Registry:
    """The filesystem registry rooted at `root`. `environ` (default: the process environment) holds the bundle
    signing key, with which bundles are checked when registered and sealed again when stored."""

    def __init__(self, root: str | Path, *, environ: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self._environ = environ

    # --- reading ---------------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and REGISTRY_NAME.match(p.name))

    def versions(self, model: str) -> list[Version]:
        """Every complete version of `model`, oldest first; RegistryError when the model has none."""
        numbers = self._numbers(model)
        if not numbers:
            raise RegistryError(f"no such model in the registry at {self.root}", model=model)
        return [self.version(model, n) for n in numbers]

    def version(self, model: str, number: int) -> Version:
        path = self._model_dir(model) / str(number)
        try:
            provenance = json.loads((path / PROVENANCE).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise RegistryError(f"no such version in the registry at {self.root}", model=model, version=number) from exc
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path / PROVENANCE} is not valid JSON: {exc}", model=model, version=number) from exc
        return Version(model, number, path, provenance)

    def aliases(self, model: str) -> dict[str, Alias]:
        folder = self._model_dir(model) / ALIASES
        if not folder.is_dir():
            return {}
        names = sorted(p.stem for p in folder.glob("*.json") if REGISTRY_NAME.match(p.stem))
        return {name: self.alias(model, name) for name in names}

    def alias(self, model: str, name: str) -> Alias:
        check_name(name, model=model, alias=name)
        path = self._model_dir(model) / ALIASES / f"{name}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Alias(model, name, int(data["version"]), tuple(int(v) for v in data["previous"]),
                         tuple(data["moves"]))  # fmt: skip
        except FileNotFoundError as exc:
            raise RegistryError(f"no such alias in the registry at {self.root}", model=model, alias=name) from exc
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{path} is unusable: {exc!r}", model=model, alias=name) from exc

    def resolve(self, model: str, alias: str) -> Version:
        """The version `alias` names."""
        return self.version(model, self.alias(model, alias).version)

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
        """Store the bundle at `bundle_dir` (checked as serve would load it) as the next version of `model`.

        `data_span` is the (start, end) of the training data, as the caller knows it (the bundle records its files,
        not their times); `metrics` any JSON-able results to keep with the version."""
        check_name(model, model=model)
        source = Path(bundle_dir)
        if parent is not None:
            self.version(model, parent)  # a parent that does not exist is a typo: refuse it before storing
        bundle, manifest = checked_bundle(model, source, environ=self._environ)
        folder = self._model_dir(model)
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".incoming.{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            save_bundle(bundle, staging / BUNDLE, environ=self._environ)
            if manifest.get("onnx"):  # save_bundle writes no graph: export it again, as `ae-monitor export --onnx`
                from ae_monitor.model.bundle import export_onnx

                export_onnx(staging / BUNDLE, environ=self._environ)
            with self._locked(model):
                number = max(self._numbers(model), default=0) + 1
                record = provenance(model, number, source, bundle, manifest, parent=parent, metrics=metrics,
                                    data_span=data_span, note=note, by=by)  # fmt: skip
                write_json(staging / PROVENANCE, record)
                staging.rename(folder / str(number))  # the version appears whole, or not at all
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.version(model, number)

    def add_metrics(self, model: str, number: int, metrics: Mapping[str, Any]) -> Version:
        """Merge `metrics` (say a shadow period's false-alert rate) into a version's provenance."""
        with self._locked(model):
            version = self.version(model, number)
            merged = {**version.provenance, "metrics": {**version.provenance.get("metrics", {}), **metrics}}
            write_json(version.path / PROVENANCE, merged)
        return self.version(model, number)

    def promote(
        self, model: str, number: int, alias: str, *, by: str | None = None, reason: str | None = None
    ) -> Alias:
        """Point `alias` at version `number` (created when new); the version it named before is kept for rollback."""
        check_name(alias, model=model, alias=alias)
        with self._locked(model):
            self.version(model, number)  # it must exist
            try:
                current: Alias | None = self.alias(model, alias)
            except RegistryError:
                current = None
            if current is not None and current.version == number:
                raise RegistryError(f"already names version {number}", model=model, alias=alias)
            previous = () if current is None else (*current.previous, current.version)
            moves = () if current is None else current.moves
            move = alias_move("promote", None if current is None else current.version, number, by, reason)
            self._write_alias(model, alias, number, previous, (*moves, move))
        return self.alias(model, alias)

    def rollback(self, model: str, alias: str, *, by: str | None = None, reason: str | None = None) -> Alias:
        """Point `alias` back at the version it named before its last promotion."""
        with self._locked(model):
            current = self.alias(model, alias)
            if not current.previous:
                raise RegistryError(f"has no earlier version to roll back to (it names version {current.version})",
                                    model=model, alias=alias)  # fmt: skip
            target = current.previous[-1]
            self.version(model, target)  # still there
            move = alias_move("rollback", current.version, target, by, reason)
            self._write_alias(model, alias, target, current.previous[:-1], (*current.moves, move))
        return self.alias(model, alias)

    # --- inside ----------------------------------------------------------------------------------------------

    def _model_dir(self, model: str) -> Path:
        check_name(model, model=model)
        return self.root / model

    def _numbers(self, model: str) -> list[int]:
        folder = self._model_dir(model)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / PROVENANCE).is_file())

    def _write_alias(self, model: str, alias: str, number: int, previous: tuple[int, ...],
                     moves: tuple[Mapping[str, Any], ...]) -> None:  # fmt: skip
        folder = self._model_dir(model) / ALIASES
        folder.mkdir(exist_ok=True)
        write_json(folder / f"{alias}.json", {"alias": alias, "version": number, "previous": list(previous),
                                                "moves": list(moves)})  # fmt: skip

    @contextlib.contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        # Writers (register, promote, rollback) of one model take turns; readers need no lock (atomic renames).
        folder = self._model_dir(model)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def checked_bundle(model: str, source: Path, *, environ: Mapping[str, str] | None) -> tuple[Bundle, dict[str, Any]]:
    """The bundle at `source`, loaded and verified as serve would, and its manifest."""
    try:
        bundle = load_bundle(source, environ=environ)
        return bundle, json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    except BundleError as exc:
        raise RegistryError(f"cannot register {source}: {exc}", model=model) from exc


def provenance(
    model: str,
    number: int,
    source: Path,
    bundle: Bundle,
    manifest: Mapping[str, Any],
    *,
    parent: int | None,
    metrics: Mapping[str, Any] | None,
    data_span: tuple[str, str] | None,
    note: str | None,
    by: str | None,
) -> dict[str, Any]:
    """The provenance record of a new version (plain JSON types)."""
    return {
        "schema_version": PROVENANCE_SCHEMA,
        "model": model,
        "version": number,
        "registered_at": _now(),
        "registered_by": by or _who(),
        "source": str(source.resolve()),
        "parent": parent,
        "bundle": {
            "name": bundle.name,
            "weights_version": bundle.version,
            "trained_at": manifest.get("created_at"),
            "kind": bundle.features.kind,
        },
        "training": _training_summary(manifest, data_span),
        "calibration": _calibration_summary(manifest.get("calibration")),
        "metrics": dict(metrics or {}),
        "note": note,
    }


def alias_move(action: str, before: int | None, after: int, by: str | None, reason: str | None) -> dict[str, Any]:
    return {"action": action, "from": before, "to": after, "at": _now(), "by": by or _who(), "reason": reason}


def stream_model_name(stream: str) -> str:
    """The registry model name of a stream's learned model: the stream id when it is a usable name, else its usable
    characters with a digest of the id appended (so that `pump/7` and `pump:7` do not share a model).

    >>> stream_model_name("pump-7"), stream_model_name("site a/pump 7")
    ('pump-7', 'site-a-pump-7-e5db4789')
    """
    if REGISTRY_NAME.match(stream):
        return stream
    digest = hashlib.sha256(stream.encode("utf-8")).hexdigest()[:8]
    usable = re.sub(r"[^A-Za-z0-9_.-]+", "-", stream).strip("-._")[:80]
    return f"{usable}-{digest}" if usable else f"stream-{digest}"


def check_name(name: str, *, model: str, alias: str | None = None) -> None:
    """Model and alias names are one path component (and safe in an MLflow search filter)."""
    if not REGISTRY_NAME.match(name):
        raise RegistryError(f"{name!r} is not a usable name: letters, digits, '_', '.', '-' (100 at most)",
                            model=model, alias=alias)  # fmt: skip


def _training_summary(manifest: Mapping[str, Any], data_span: tuple[str, str] | None) -> dict[str, Any]:
    extra = manifest.get("extra", {})
    return {
        "files": list(extra.get("training_files", [])),
        "data_span": None if data_span is None else {"start": data_span[0], "end": data_span[1]},
        "result": extra.get("training_result"),
    }


def _calibration_summary(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # The full record stays in the bundle's manifest; this is what a person comparing versions reads.
    if record is None:
        return None
    keys = ("threshold", "method", "parameters", "n_samples", "data_sha256", "created_at", "notes")
    return {key: record.get(key) for key in keys}


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    # temp + fsync + os.replace: on a shared volume a reader sees the old file or the new one, never a part.
    staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        with staged.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid) and no USER variable
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
