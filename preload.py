"""AUTOMATIC1111 / Forge: command-line options of the OneStep SR extension (run before the command
line is parsed). The webui passes ``--onestepsr-models-path`` to ``UpscalerOneStepSR`` itself (the
option is named after the class)."""


def preload(parser):
    parser.add_argument("--onestepsr-models-path", type=str, default=None,
                        help="folder with OneStep SR models (SinSR/ResShift checkpoints, our .safetensors); "
                             "default: <models>/OneStepSR")
