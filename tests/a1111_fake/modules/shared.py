"""``shared``: opts, cmd_opts, state, device, models_path, sd_upscalers (set by the loader)."""
import argparse

import torch

from modules.options import OptionInfo, Options  # noqa: F401 - the webui re-exports OptionInfo here

opts = Options()
opts.data.update(enable_upscale_progressbar=True, ESRGAN_tile=192, ESRGAN_tile_overlap=8)
cmd_opts = argparse.Namespace(no_half=False, use_cpu=[])
models_path = "models"
device = torch.device("cpu")
sd_upscalers: list = []


class State:
    interrupted = False
    skipped = False
    job = ""

    def interrupt(self) -> None:
        self.interrupted = True


state = State()
