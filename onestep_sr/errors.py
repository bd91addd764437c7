"""The names users see for the pack's exception classes.

Hosts print an error's type as ``<module>.<qualname>``: ComfyUI in its error dialog and report
(``execution.full_type_name``), every host in tracebacks. Inside ComfyUI the module is the pack's
folder plus the submodule (``/…/custom_nodes/comfyui-onestep-sr.onestep_sr.checkpoint``), in
A1111/Forge ``onestep_sr_webui.…``. :func:`public_error` makes a class read ``onestep_sr.<Name>``
wherever the package was imported from. Pickling (a worker process, ``copy``) still finds the
class through the module it was defined in, so the copy is the same class (``isinstance`` holds).
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, TypeVar

PUBLIC_MODULE = "onestep_sr"
_E = TypeVar("_E", bound=type)


def public_error(cls: _E) -> _E:
    """Class decorator: ``cls`` is shown as ``onestep_sr.<its name>``."""
    cls._defined_in = cls.__module__
    cls.__module__ = PUBLIC_MODULE
    cls.__reduce__ = _reduce
    return cls


def shown_name(cls: type) -> str:
    """The type name ComfyUI shows for ``cls`` (``module.qualname``, bare for builtins)."""
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _reduce(self: BaseException) -> tuple:
    cls = type(self)
    home = cls.__dict__.get("_defined_in")
    if home is None:  # a subclass defined elsewhere without the decorator: Python's own way
        return BaseException.__reduce__(self)
    return _rebuild, (home, cls.__qualname__, self.args), (self.__dict__ or None)


def _rebuild(home: str, qualname: str, args: tuple) -> Any:
    found: Any = sys.modules.get(home) or importlib.import_module(home)
    for part in qualname.split("."):
        found = getattr(found, part)
    exc = found.__new__(found, *args)
    exc.args = args
    return exc


@public_error
class ModelNotFoundError(FileNotFoundError):
    """A model file that was named is not where it was looked for (a host's model folders, or
    this copy's bundled weights)."""


@public_error
class IncompatibleInputError(ValueError):
    """An input connected to a node (a model, VAE, latent, conditioning or image) that it cannot
    use; the message says what fits."""


@public_error
class ImageInputError(ValueError):
    """An input image, array, tensor or file the engine cannot use (the message says why)."""
