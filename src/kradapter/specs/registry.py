"""The table of method specs: the built-in ones, then any a user registers.

A user's spec reaches every tool (`kradapter budget`, `approx`, `train`, `compare`, `report`) in one of three ways:

* their script calls ``register_spec(MySpec())`` before calling the library;
* the CLI's ``--plugin FILE_OR_MODULE`` (repeatable) or the ``KRADAPTER_PLUGINS`` environment variable (entries
  separated by the OS path separator), each a Python file or an importable module that registers its specs when
  loaded; ``--plugin`` also sets the variable, so processes the CLI starts (``compare``'s runs) load them too;
* an installed package's entry point in the group ``kradapter.methods`` naming a MethodSpec subclass or instance.

Plugins load once, on the first lookup.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from .base import MethodSpec

PLUGINS_ENV = "KRADAPTER_PLUGINS"
ENTRY_POINT_GROUP = "kradapter.methods"

_SPECS: dict[str, MethodSpec] = {}
_loaded: set[str] = set()
_entry_points_loaded = False


def register_spec(spec: MethodSpec, replace: bool = False) -> MethodSpec:
    """Add ``spec`` under ``spec.name``. A name already taken is an error unless ``replace`` (or the same class
    registering again, as a plugin file loaded twice does)."""
    if isinstance(spec, type) and issubclass(spec, MethodSpec):
        spec = spec()
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register_spec takes a kradapter.specs.MethodSpec, got {type(spec).__name__}")
    name = spec.name
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"method spec {type(spec).__name__} needs a name of letters, digits, '-' or '_', got {name!r}")
    old = _SPECS.get(name)
    if old is not None and not replace and type(old).__qualname__ != type(spec).__qualname__:
        raise ValueError(f"a method named {name!r} is already registered ({type(old).__name__}); pass replace=True")
    if spec.knob is not None and spec.knob not in spec.hparams:
        raise ValueError(
            f"method spec {name!r}: its knob {spec.knob!r} is not one of its hparams {sorted(spec.hparams)}"
        )
    _SPECS[name] = spec
    return spec


def load_plugin(entry: str) -> None:
    """Import one plugin: a .py file (by path) or a module name. Errors name the plugin."""
    path = Path(entry)
    key = _key(entry)
    if key in _loaded:
        return
    try:
        if entry.endswith(".py"):
            if not path.is_file():
                raise FileNotFoundError(f"plugin file {entry} does not exist")
            module_name = f"kradapter_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(entry)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ImportError(f"plugin {entry} failed to load: {type(err).__name__}: {err}") from err
    _loaded.add(key)


def _key(entry: str) -> str:
    return str(Path(entry).resolve()) if entry.endswith(".py") else entry


def load_plugins() -> None:
    """Load what KRADAPTER_PLUGINS names and the installed entry points (once each)."""
    global _entry_points_loaded
    for entry in filter(None, os.environ.get(PLUGINS_ENV, "").split(os.pathsep)):
        load_plugin(entry)
    if not _entry_points_loaded:
        _entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            register_spec(ep.load())


def add_plugin(entry: str) -> None:
    """What ``--plugin`` does: load it now and add it to KRADAPTER_PLUGINS for child processes."""
    load_plugin(entry)
    entries = [e for e in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if e]
    if _key(entry) not in map(_key, entries):
        os.environ[PLUGINS_ENV] = os.pathsep.join([*entries, _key(entry)])


def method_names() -> tuple[str, ...]:
    """Every registered method, built-in first, in registration order."""
    load_plugins()
    return tuple(_SPECS)


def get_spec(name: str) -> MethodSpec:
    """The spec of ``name``; an unknown name is one error listing the valid ones."""
    if name not in _SPECS:
        load_plugins()
    if name not in _SPECS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(_SPECS)}")
    return _SPECS[name]


def spec_for_config(config) -> MethodSpec | None:
    """The spec whose PEFT config ``config`` is (None for a method no spec describes)."""
    load_plugins()
    for spec in _SPECS.values():
        if spec.matches_config(config):
            return spec
    return None
