"""The pack's exception types read ``onestep_sr.<Name>`` where hosts show them (ComfyUI's error
dialog and report: ``module.qualname``; tracebacks in every host), and still pickle and match
``isinstance`` as before. The hosts' own views are in test_nodes.py and test_a1111.py."""
from __future__ import annotations

import copy
import pickle
import traceback

import pytest

import onestep_sr

ENGINE_ERRORS = {  # name -> the builtin a host or a caller may catch it as
    "ArchitectureMismatch": ValueError, "Cancelled": Exception, "CheckpointError": ValueError,
    "DownloadError": RuntimeError, "HashMismatchError": RuntimeError, "ImageInputError": ValueError,
    "IncompatibleInputError": ValueError, "LoraFormatError": ValueError, "ModelNotFoundError": FileNotFoundError,
    "NonFiniteError": FloatingPointError, "OptionError": ValueError, "OutOfMemoryError": RuntimeError,
    "SizeMismatchError": RuntimeError,
    "UnknownModelError": KeyError, "WeightsUnavailableError": RuntimeError,
}


def make(cls: type, message: str = "the sentence") -> BaseException:
    if cls is onestep_sr.OptionError:  # its arguments are the option, the value and the rule
        return cls("tile", 65, "a multiple of 64", message=message)
    return cls(message)


def comfyui_type_name(cls: type) -> str:
    """As ComfyUI's execution.full_type_name formats ``exception_type``."""
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


@pytest.mark.parametrize("name", sorted(ENGINE_ERRORS))
def test_every_engine_error_is_shown_as_onestep_sr_name(name):
    cls = getattr(onestep_sr, name)
    assert comfyui_type_name(cls) == f"onestep_sr.{name}"
    error = make(cls)
    assert traceback.format_exception_only(error)[-1] == f"onestep_sr.{name}: the sentence\n"
    assert isinstance(error, ENGINE_ERRORS[name])


@pytest.mark.parametrize("name", sorted(ENGINE_ERRORS))
def test_engine_errors_pickle_and_copy_as_the_same_class(name):
    cls = getattr(onestep_sr, name)
    error = make(cls)
    error.detail = 7
    for twin in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error)):
        assert type(twin) is cls and twin.args == ("the sentence",) and twin.detail == 7
        assert str(twin) == str(error)


def test_subclasses_keep_their_parents_and_an_undecorated_subclass_pickles_as_usual():
    assert issubclass(onestep_sr.HashMismatchError, onestep_sr.DownloadError)
    assert issubclass(onestep_sr.LoraFormatError, onestep_sr.CheckpointError)
    twin = pickle.loads(pickle.dumps(_Local("x")))
    assert type(twin) is _Local and isinstance(twin, onestep_sr.CheckpointError)


class _Local(onestep_sr.CheckpointError):
    pass


def test_an_unknown_model_reads_as_a_sentence_not_a_quoted_key():
    from onestep_sr.registry import get_entry

    with pytest.raises(onestep_sr.UnknownModelError) as err:
        get_entry("no_such_model")
    assert traceback.format_exception_only(err.value)[-1].startswith("onestep_sr.UnknownModelError: unknown model")
