"""AUTOMATIC1111 / Forge extension: OneStep SR models as entries of one ``Upscaler`` subclass.

The webui runs the repository's ``preload.py`` (the ``--onestepsr-models-path`` option) and
``scripts/onestep_sr_upscalers.py``, which imports this package under the unique name
``onestep_sr_webui`` (the repository root as a package; its ComfyUI entry registers nothing
outside ComfyUI) so that the engine is found again at request time, when the webui has taken
the extension off ``sys.path``. Modules:

* ``webui``: every call into the webui's ``modules.*`` (one place to follow its API);
* ``settings``: the options under Settings -> Upscaling;
* ``entries``: the dropdown entries (registry, bundled, files in the models folders) and the
  weights behind each;
* ``upscaler``: ``UpscalerOneStepSR`` (a direct ``Upscaler`` subclass, as the webui requires).
"""
