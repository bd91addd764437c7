"""The webui launcher's helpers that extension installers call (install.py runs with the webui on
PYTHONPATH); this fake records what an installer asks for."""
import importlib.util

pip_calls = []


def is_installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def run_pip(command: str, desc: str = None, live: bool = False):
    pip_calls.append(command)
    print(f"FAKE-PIP {command}")
