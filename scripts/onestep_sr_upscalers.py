"""AUTOMATIC1111 / Forge entry (the webui runs every scripts/*.py of an extension): thin.

Imports the repository as the package ``onestep_sr_webui`` (a name no other extension uses; the
root ``__init__`` registers nothing outside ComfyUI) so the adapter in ``extensions/a1111`` and
the engine stay importable after the webui takes the extension off ``sys.path``. Defining
``UpscalerOneStepSR`` is what registers the upscaler; the settings callback is added at every
(re)load, as the webui clears callbacks on Reload UI."""
import importlib.util
import sys
from pathlib import Path

PACKAGE = "onestep_sr_webui"
ROOT = Path(__file__).resolve().parents[1]

if PACKAGE not in sys.modules:
    _spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    sys.modules[PACKAGE] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[PACKAGE])

from onestep_sr_webui.extensions.a1111 import settings, webui  # noqa: E402
from onestep_sr_webui.extensions.a1111.upscaler import UpscalerOneStepSR  # noqa: E402,F401  (registers it)

webui.on_ui_settings(settings.register)
