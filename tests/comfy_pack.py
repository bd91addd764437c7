"""Load the node pack the way ComfyUI does (its root ``__init__.py`` as a package, then
``comfy_entrypoint``), against the fake host in ``comfy_fake/``, and run nodes the way ComfyUI's
executor does: widget values checked against the schema (bounds, combo options), then
``execute(**inputs)``. Used by the node tests and by benchmarks/bench_nodes.py."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

FAKE = Path(__file__).resolve().parent / "comfy_fake"
ROOT = Path(__file__).resolve().parents[1]
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "spandrel")


class ValidationError(ValueError):
    """What ComfyUI reports as a node error before anything runs (HTTP 400 with node_errors)."""


def _purge(prefixes: tuple[str, ...]) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in prefixes:
            del sys.modules[name]


def load_pack(base: Path, package: str = "onestep_sr_pack",
              extra_model_paths: dict[str, list[str]] | None = None,
              missing: tuple[str, ...] = ()) -> tuple[ModuleType, dict[str, type]]:
    """(the pack module, {node_id: node class}); the fake ComfyUI's models folder is base/models.
    ``extra_model_paths``: folders added as ComfyUI's extra_model_paths.yaml would add them, before
    the pack is imported (as main.py does). ``missing``: host modules to make unimportable."""
    unload_pack(package)
    sys.path.insert(0, str(FAKE))
    for name in missing:
        sys.modules[name] = None  # the import system's "not there"
    import folder_paths

    folder_paths.models_dir = str(base / "models")
    folder_paths.folder_names_and_paths.clear()
    folder_paths.folder_names_and_paths["checkpoints"] = ([str(base / "models" / "checkpoints")],
                                                          folder_paths.supported_pt_extensions)
    folder_paths.folder_names_and_paths["upscale_models"] = ([str(base / "models" / "upscale_models")],
                                                             folder_paths.supported_pt_extensions)
    for name, paths in (extra_model_paths or {}).items():
        for path in paths:
            folder_paths.add_model_folder_path(name, path)
    spec = importlib.util.spec_from_file_location(package, ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    spec.loader.exec_module(module)
    extension = asyncio.run(module.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return module, {node.GET_SCHEMA().node_id: node for node in nodes}


def unload_pack(package: str = "onestep_sr_pack") -> None:
    while str(FAKE) in sys.path:
        sys.path.remove(str(FAKE))
    _purge(HOST_MODULES + (package,))


def widget_values(node: type, **given: Any) -> dict[str, Any]:
    """The inputs ComfyUI would pass: given values, widget defaults for the rest, all checked."""
    schema = node.GET_SCHEMA()
    values = {}
    for spec in schema.inputs:
        if spec.id in given:
            value = given.pop(spec.id)
        elif getattr(spec, "default", None) is not None:
            value = spec.default
        elif spec.optional:
            continue
        elif spec.io_type == "COMBO":
            value = spec.options[0]  # the frontend shows the first option
        else:
            raise ValidationError(f"{schema.node_id}: required input {spec.id!r} missing")
        _check(schema.node_id, spec, value)
        values[spec.id] = bool(value) if spec.io_type == "BOOLEAN" else value  # as ComfyUI converts it
    if given:
        raise ValidationError(f"{schema.node_id}: unknown inputs {sorted(given)}")
    return values


def api_inputs(node: type, **given: Any) -> dict[str, Any]:
    """The ``inputs`` of one node of a saved API-format graph (what /prompt receives), checked as
    ComfyUI's executor checks them (execution.validate_inputs): no widget default is filled in
    (that is the frontend's job, and a saved graph has no frontend), so a required input that is
    missing is refused ("Required input is missing", required_input_missing); a missing optional
    one is left out and ``execute``'s own default applies; values get the same checks."""
    schema = node.GET_SCHEMA()
    values = {}
    for spec in schema.inputs:
        if spec.id not in given:
            if spec.optional:
                continue
            raise ValidationError(f"{schema.node_id}.{spec.id}: required_input_missing (Required input is missing)")
        value = given.pop(spec.id)
        _check(schema.node_id, spec, value)
        values[spec.id] = bool(value) if spec.io_type == "BOOLEAN" else value  # as ComfyUI converts it
    if given:
        raise ValidationError(f"{schema.node_id}: unknown inputs {sorted(given)}")
    return values


def run_api(node: type, **inputs: Any) -> tuple:
    """Run one node of a saved API-format graph: validated like ComfyUI's /prompt, then executed."""
    return node.execute(**api_inputs(node, **inputs)).args


def _check(node_id: str, spec: Any, value: Any) -> None:
    if spec.io_type in ("INT", "FLOAT"):
        if spec.min is not None and value < spec.min:
            raise ValidationError(f"{node_id}.{spec.id}: value_smaller_than_min ({value} < {spec.min})")
        if spec.max is not None and value > spec.max:
            raise ValidationError(f"{node_id}.{spec.id}: value_bigger_than_max ({value} > {spec.max})")
    if spec.io_type == "COMBO" and value not in spec.options:
        raise ValidationError(f"{node_id}.{spec.id}: value_not_in_list ({value!r})")


def run_node(node: type, **inputs: Any) -> tuple:
    """Validate like ComfyUI, then execute; the node's outputs."""
    output = node.execute(**widget_values(node, **inputs))
    return output.args


def shown_type(error: BaseException) -> str:
    """The type name ComfyUI shows for ``error`` (execution.full_type_name: module + qualname, bare
    for builtins)."""
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


@contextlib.contextmanager
def refused(match: str):
    """A node's refusal: a ValueError whose message matches ``match`` and whose type ComfyUI shows
    as ``onestep_sr.<Name>`` (the README's promise), never a builtin ``ValueError``."""
    import pytest

    with pytest.raises(ValueError, match=match) as err:
        yield err
    assert shown_type(err.value).startswith("onestep_sr."), shown_type(err.value)
