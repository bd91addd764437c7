"""Project rules that hosts depend on: the engine imports no host or heavy extra, torch is never
pinned from above, checkpoints are never unpickled unsafely."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from helpers import REPO

FORBIDDEN = ["comfy", "comfy_api", "folder_paths", "modules", "gradio", "torchvision", "diffusers", "peft",
             "transformers", "accelerate"]


def test_engine_imports_no_host_and_no_heavy_extra():
    code = ("import sys, onestep_sr, onestep_sr.cli, onestep_sr.pipeline; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.split()
    assert "torch" in loaded
    assert not set(FORBIDDEN) & set(loaded)


def test_layout_and_core_dependencies():
    for path in ["onestep_sr", "nodes", "extensions", "weights", "training", "tests", "benchmarks",
                 "__init__.py", "README.md", ".ci/run"]:
        assert (REPO / path).exists(), path
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in meta["dependencies"]]
    assert sorted(names) == ["numpy", "pillow", "safetensors", "torch"]
    torch_spec = next(d for d in meta["dependencies"] if d.startswith("torch"))
    assert "<" not in torch_spec and "==" not in torch_spec
    assert {"sd", "train", "app", "test"} <= set(meta["optional-dependencies"])


def test_no_unsafe_torch_load_and_no_torchvision_in_sources():
    offenders = []
    for path in REPO.rglob("*.py"):
        if ".git" in path.parts:
            continue
        text = path.read_text()
        for call in re.findall(r"torch\.(?:serialization\.)?load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path}: {call}")
        if re.search(r"^\s*(import|from)\s+torchvision", text, re.M):
            offenders.append(f"{path}: imports torchvision")
    assert not offenders


def test_ci_runs_the_readme_commands_in_a_new_virtual_environment():
    ci = (REPO / ".ci/run").read_text()
    readme = (REPO / "README.md").read_text()
    for name, word in (("TEST_COMMAND", "pytest"), ("MAIN_COMMAND", "onestep-sr upscale")):
        command = re.search(rf"^{name}='(.+)'$", ci, re.M)
        assert command and word in command.group(1), name
        assert re.search(rf'^bash -c "\${name}"', ci, re.M), name
        assert command.group(1) in readme, name
    # the venv is made (and entered) before either command runs
    venv = ci.index("python3 -m venv")
    assert venv < ci.index("source ") < ci.index('bash -c "$MAIN_COMMAND"') < ci.index('bash -c "$TEST_COMMAND"')


def _imports(path) -> set[str]:
    """The modules a source file imports (relative imports resolved against its package)."""
    import ast

    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            module = ".".join(x for x in (base, node.module or "") if x)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_dependencies_point_one_way():
    """The engine never imports the trainers (onestep-sr train is found through an entry point);
    imagefile (headers, paths) is below imageio (pixels), never the other way round; the kohya LoRA
    format is below the OSEDiff conversion."""
    for path in (REPO / "onestep_sr").rglob("*.py"):
        assert not any(m == "training" or m.startswith("training.") for m in _imports(path)), path
    assert not any(m.startswith("onestep_sr.imageio") for m in _imports(REPO / "onestep_sr" / "imagefile.py"))
    assert not any(m.startswith("onestep_sr.sd.osediff_convert") or m == "onestep_sr.sd.lora"
                   for m in _imports(REPO / "onestep_sr" / "sd" / "kohya_lora.py"))
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["entry-points"]["onestep_sr.commands"]["train"] == "training.cli:main"


def test_train_without_its_entry_point_says_how_to_install(monkeypatch):
    import pytest

    from onestep_sr.cli import main, train

    monkeypatch.setattr(train, "entry_points", lambda group: [])
    with pytest.raises(SystemExit, match=r"registered when OneStep SR is installed with pip: .*-e \"\.\[train\]\".*"
                                         r"python -m training"):
        main(["train", "--help"])
