"""``load_upscalers``: every DIRECT subclass of Upscaler (newest class per str(cls)), built with
one argument, the value of the ``--<classname minus 'upscaler'>-models-path`` option."""
from modules import shared
from modules.upscaler import Upscaler, UpscalerLanczos, UpscalerNearest, UpscalerNone

BUILT_INS = (UpscalerNone, UpscalerLanczos, UpscalerNearest)   # listed first


def load_upscalers():
    datas = []
    commandline_options = vars(shared.cmd_opts)
    used_classes = {}
    for cls in reversed(Upscaler.__subclasses__()):
        classname = str(cls)
        if classname not in used_classes:
            used_classes[classname] = cls
    for cls in reversed(used_classes.values()):
        name = cls.__name__
        cmd_name = f"{name.lower().replace('upscaler', '')}_models_path"
        commandline_model_path = commandline_options.get(cmd_name, None)
        scaler = cls(commandline_model_path)
        scaler.user_path = commandline_model_path
        scaler.model_download_path = commandline_model_path or scaler.model_path
        datas += scaler.scalers
    shared.sd_upscalers = sorted(datas, key=lambda x: "" if isinstance(x.scaler, BUILT_INS) else x.name.lower())
