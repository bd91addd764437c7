"""AUTOMATIC1111 / Forge installer hook (run by the webui's launcher). OneStep SR needs only what
every webui already has (torch, numpy, Pillow, safetensors): it installs nothing, so it can never
change the webui's torch, torchvision, gradio or numpy. It reports a missing module instead."""
import importlib.util

missing = [name for name in ("torch", "numpy", "PIL", "safetensors") if importlib.util.find_spec(name) is None]
if missing:
    print(f"[OneStep SR] missing Python modules: {', '.join(missing)}; this webui environment is incomplete "
          f"(OneStep SR installs nothing itself)")
