"""Device makers' pre- and post-processing plugins: the hook contract and the registry that finds them.

A plugin is code in an *installed distribution* that registers a factory
under one of two entry-point groups::

    [project.entry-points."medge.preprocess"]
    contrast-stretch = "medge_plugin_example:contrast_stretch"

    [project.entry-points."medge.postprocess"]
    rename-labels = "medge_plugin_example:rename_labels"

The model config names it (``[preprocessing.plugin]``, ``[postprocessing.plugin]``,
each with a ``name`` and optional ``settings``); the factory is called once
with those settings and returns the hook. Plugins are found only through
``importlib.metadata`` entry points, never from a file path or a module name
in a config, so an appliance runs only code that was installed on it.

* A **preprocess** hook receives a :class:`PreprocessEvent` (the dataset, the
  tensor the built-in pipeline produced, the spec, the frames) and returns a
  tensor of the same shape as float32. It runs inside
  :func:`sdk.preprocessing.preprocess`, so calibration and the runtime apply
  it identically.
* A **postprocess** hook receives a :class:`PostprocessEvent` (the built-in
  :class:`Classification` of one image, the engine's outputs, that image's
  input, the dataset, the model config) and returns a :class:`Classification`.

The compiler records which distribution and version provided each plugin
(:class:`PluginRecord` in the manifest's compile record); the runtime refuses
a package whose plugin is missing or comes from another distribution or version.

Hooks are shared by the runtime's threads: they must not keep per-call state.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydicom import Dataset

from sdk.errors import ConfigError

if TYPE_CHECKING:
    from sdk.model_config import ModelConfig
    from sdk.preprocess_spec import PreprocessSpec

__all__ = [
    "GROUPS",
    "Classification",
    "PluginKind",
    "PluginRecord",
    "PluginRef",
    "PluginRegistry",
    "PostprocessEvent",
    "PostprocessPlugin",
    "PostprocessPluginFactory",
    "PreprocessEvent",
    "PreprocessPlugin",
    "PreprocessPluginFactory",
    "get_registry",
]

log = logging.getLogger(__name__)

PluginKind = Literal["preprocess", "postprocess"]

GROUPS: dict[PluginKind, str] = {"preprocess": "medge.preprocess", "postprocess": "medge.postprocess"}
"""The entry-point group of each kind of plugin."""

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_SECTION: dict[PluginKind, str] = {"preprocess": "preprocessing", "postprocess": "postprocessing"}
"""Where each kind is named in the model config."""


class PluginRef(BaseModel):
    """A plugin as a model config names it: the entry-point name and the settings its factory receives.

    Settings are JSON values (TOML dates are refused) because they travel in
    the manifest and must reach the appliance's factory exactly as the compiler's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, max_length=100)
    settings: dict[str, JsonValue] = {}

    def settings_key(self) -> str:
        """The settings in canonical JSON: one hook per name and settings."""
        return json.dumps(self.settings, sort_keys=True, separators=(",", ":"))


class PluginRecord(BaseModel):
    """Which installed distribution provided a plugin at compile time (the manifest's compile record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: PluginKind
    name: str = Field(min_length=1)
    distribution: str = Field(min_length=1)
    version: str = Field(min_length=1)

    def describe(self) -> str:
        return f"{self.kind} plugin {self.name!r} ({self.distribution} {self.version})"


@dataclass(frozen=True)
class Classification:
    """One image's result: the top label, all scores, the decision and where.

    Built by :func:`runtime.postprocess.classify`; a postprocess plugin
    receives it and returns it (changed with :func:`dataclasses.replace`).
    """

    label: str
    score: float
    scores: dict[str, float]
    threshold: float
    positive: bool
    row: float | None = None
    column: float | None = None
    patient_mm: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class PreprocessEvent:
    """What a preprocess hook sees.

    Attributes:
        ds: the instance being preprocessed (read it, do not change it).
        tensor: the built-in pipeline's output, ``spec.input_shape(len(frames))``,
            float32; the hook may change it in place and return it.
        spec: the preprocessing spec (its ``layout`` says where the channels are).
        frames: the frame index of each of the tensor's images.
        settings: the plugin's settings from the model config.
    """

    ds: Dataset
    tensor: np.ndarray
    spec: PreprocessSpec
    frames: tuple[int, ...]
    settings: Mapping[str, JsonValue]


@dataclass(frozen=True)
class PostprocessEvent:
    """What a postprocess hook sees, for one image of a batch.

    Attributes:
        result: the built-in classification of this image.
        outputs: the engine's outputs for the whole batch (read-only).
        index: this image's index in the batch.
        tensor: this image's model input (read-only).
        ds: the instance.
        config: the model config (labels, thresholds, output names).
        settings: the plugin's settings from the model config.
    """

    result: Classification
    outputs: Mapping[str, np.ndarray]
    index: int
    tensor: np.ndarray
    ds: Dataset
    config: ModelConfig
    settings: Mapping[str, JsonValue]


class PreprocessPlugin(Protocol):
    """A preprocess hook: the tensor after the built-in pipeline, same shape, float32."""

    def __call__(self, event: PreprocessEvent, /) -> np.ndarray: ...


class PostprocessPlugin(Protocol):
    """A postprocess hook: the classification of one image, possibly changed."""

    def __call__(self, event: PostprocessEvent, /) -> Classification: ...


PreprocessPluginFactory = Callable[[Mapping[str, JsonValue]], PreprocessPlugin]
"""What a ``medge.preprocess`` entry point names: settings in, hook out."""

PostprocessPluginFactory = Callable[[Mapping[str, JsonValue]], PostprocessPlugin]
"""What a ``medge.postprocess`` entry point names: settings in, hook out."""


class PluginRegistry:
    """The plugins installed in this Python environment, found through entry points.

    Entry points are listed when the registry is made; a plugin's code is
    imported only when a hook is first asked for, and each hook (one per name
    and settings) is made once and kept.

    Args:
        found: the entry points of each kind; by default those of the
            installed distributions (:func:`importlib.metadata.entry_points`).

    Raises (from its methods):
        ConfigError: a name is not registered, registered by more than one
            distribution, from another distribution or version than recorded,
            or its factory fails or returns something that is not a hook.
    """

    def __init__(self, found: Mapping[PluginKind, Sequence[EntryPoint]] | None = None) -> None:
        if found is None:
            found = {kind: list(entry_points(group=group)) for kind, group in GROUPS.items()}
        self._found: dict[PluginKind, dict[str, list[EntryPoint]]] = {kind: {} for kind in GROUPS}
        for kind, points in found.items():
            for point in points:
                self._found[kind].setdefault(point.name, []).append(point)
        self._hooks: dict[tuple[PluginKind, str, str], Any] = {}
        self._lock = threading.Lock()

    def names(self, kind: PluginKind) -> list[str]:
        """The registered names of one kind, sorted."""
        return sorted(self._found[kind])

    def record(self, kind: PluginKind, name: str) -> PluginRecord:
        """The distribution and version that provide ``name``.

        Raises:
            ConfigError: the name is not registered, or more than one distribution registers it.
        """
        point = self._entry_point(kind, name)
        dist = point.dist
        if dist is None:  # pragma: no cover - entry points from importlib.metadata always have one
            raise ConfigError(
                f"{kind} plugin {name!r} has no installed distribution", field=f"{_SECTION[kind]}.plugin.name"
            )
        return PluginRecord(kind=kind, name=name, distribution=dist.name, version=dist.version)

    def check(self, recorded: PluginRecord) -> None:
        """Refuse unless the installed plugin is the one a package was compiled with.

        Raises:
            ConfigError: it is missing, ambiguous, or from another distribution or version.
        """
        try:
            installed = self.record(recorded.kind, recorded.name)
        except ConfigError as exc:
            raise ConfigError(f"the package needs {recorded.describe()}: {exc.message}") from exc
        if installed.distribution != recorded.distribution or installed.version != recorded.version:
            raise ConfigError(
                f"the package needs {recorded.describe()}, but this environment has it from "
                f"{installed.distribution} {installed.version}"
            )

    def preprocess_hook(self, ref: PluginRef) -> PreprocessPlugin:
        """The preprocess hook ``ref`` names, made by its factory with its settings on first use."""
        hook: PreprocessPlugin = self._hook("preprocess", ref)
        return hook

    def postprocess_hook(self, ref: PluginRef) -> PostprocessPlugin:
        """The postprocess hook ``ref`` names, made by its factory with its settings on first use."""
        hook: PostprocessPlugin = self._hook("postprocess", ref)
        return hook

    def _entry_point(self, kind: PluginKind, name: str) -> EntryPoint:
        points = self._found[kind].get(name, [])
        if not points:
            registered = ", ".join(repr(n) for n in self.names(kind)) or "none"
            raise ConfigError(
                f"no {kind} plugin named {name!r} is installed (entry-point group {GROUPS[kind]!r}; "
                f"installed: {registered})",
                field=f"{_SECTION[kind]}.plugin.name",
            )
        if len(points) > 1:
            providers = ", ".join(sorted(_provider(point) for point in points))
            raise ConfigError(
                f"{kind} plugin name {name!r} is registered more than once ({providers}): "
                "uninstall all but one, a plugin must be unambiguous",
                field=f"{_SECTION[kind]}.plugin.name",
            )
        return points[0]

    def _hook(self, kind: PluginKind, ref: PluginRef) -> Any:
        key = (kind, ref.name, ref.settings_key())
        with self._lock:
            hook = self._hooks.get(key)
            if hook is None:
                hook = self._hooks[key] = self._make(kind, ref)
            return hook

    def _make(self, kind: PluginKind, ref: PluginRef) -> Any:
        point = self._entry_point(kind, ref.name)
        where = f"{kind} plugin {ref.name!r} ({_provider(point)})"
        try:
            factory = point.load()
        except Exception as exc:
            raise ConfigError(f"{where} cannot be imported: {exc!r}", field=f"{_SECTION[kind]}.plugin.name") from exc
        if not callable(factory):
            raise ConfigError(
                f"{where}: entry point {point.value!r} is not callable", field=f"{_SECTION[kind]}.plugin.name"
            )
        try:
            hook = factory(dict(ref.settings))
        except Exception as exc:  # a plugin's own validation of its settings
            raise ConfigError(
                f"{where} refused its settings: {exc}", field=f"{_SECTION[kind]}.plugin.settings"
            ) from exc
        if not callable(hook):
            raise ConfigError(
                f"{where}: its factory returned {type(hook).__name__}, not a callable hook",
                field=f"{_SECTION[kind]}.plugin.name",
            )
        log.info("loaded %s", where)
        return hook


def _provider(point: EntryPoint) -> str:
    dist = point.dist
    return f"{dist.name} {dist.version}" if dist is not None else point.value


@functools.lru_cache(maxsize=1)
def get_registry() -> PluginRegistry:
    """The process's registry of installed plugins, made on first use.

    Tests that install or remove a plugin call ``get_registry.cache_clear()``.
    """
    return PluginRegistry()
