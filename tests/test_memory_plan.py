"""The memory plan of ``osediff`` / ``guided`` (training/sd/memory_plan.py): made on the meta
device before any weights are read, its parameter counts are those of the loaded networks (and
of SD 1.5 at full size), its activation count is the bytes autograd keeps, and ``--plan`` prints
it and exits."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from helpers import wave_images  # noqa: E402
from sd_tiny import make_tiny_sd  # noqa: E402
from training.sd.memory_plan import SavedBytes, memory_plan, meta_networks, parameters, read_run_configs  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    _, ckpt, _ = make_tiny_sd(root / "sd", "sd1", seed=0)
    return {"root": root, "ckpt": str(ckpt), "config_dir": str(ckpt.parent / "config"),
            "data": str(wave_images(root / "hr", count=2, size=64))}


def config(tiny, trainer: str, **options):
    from training.sd.guided import GuidedConfig
    from training.sd.osediff import OSEDiffConfig

    cls = GuidedConfig if trainer == "guided" else OSEDiffConfig
    return cls(**{"checkpoint": tiny["ckpt"], "config_dir": tiny["config_dir"], "data": tiny["data"],
                  "out": str(tiny["root"] / trainer), "gt_size": 64, "steps": 1, "warmup": 0, **options})


def test_saved_bytes_counts_each_kept_activation_once_and_no_parameter():
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    for device in ("cpu", "meta"):
        model = net.to_empty(device=device) if device == "meta" else net
        x = torch.zeros(2, 8, device=device)
        with SavedBytes(model) as counter:
            model(x)
        # Linear 1 keeps its input (2x8 fp32), ReLU its output (2x16), which Linear 2 keeps too
        assert counter.total == 4 * (2 * 8 + 2 * 16) and counter.largest == 4 * 2 * 16, device


def test_the_sd15_parameter_counts_come_from_the_configs_alone(tmp_path):
    from types import SimpleNamespace

    fake = tmp_path / "not_read.safetensors"  # the family is given: the file is never opened
    configs, family, _ = read_run_configs(SimpleNamespace(checkpoint=str(fake), family="sd1", config_dir=None,
                                                          prediction_type=None))
    unet, vae, text = meta_networks(configs)
    assert family == "sd1" and all(p.device.type == "meta" for p in unet.parameters())
    assert (parameters(unet), parameters(vae), parameters(text)) == (859_520_964, 83_653_863, 123_060_480)


@pytest.mark.parametrize("trainer", ["osediff", "guided"])
def test_the_plan_counts_what_the_run_loads_and_trains(tiny, trainer, monkeypatch):
    from onestep_sr.sd import checkpoint as ck

    reads = []
    real_read = ck.read_checkpoint
    monkeypatch.setattr(ck, "read_checkpoint", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    plan = memory_plan(trainer, config(tiny, trainer))
    assert reads == []  # no weights read for the plan (the family comes from the file's header)
    if trainer == "guided":
        from training.sd.guided import GuidedRun as Run
    else:
        from training.sd.osediff import OSEDiffRun as Run
    run = Run(config(tiny, trainer))
    sd, counts = run.sd, {name: n for name, n, _ in plan.networks}

    def added(module):  # what training attached: LoRA factors and the guidance input
        return sum(p.numel() for n, p in module.named_parameters() if "lora_" in n or "cond_proj" in n)

    unet_row = next(name for name in counts if name.startswith("UNet"))
    assert counts[unet_row] == parameters(sd.unet) - added(sd.unet)
    assert counts["VAE"] == parameters(sd.vae) - added(sd.vae)
    assert counts["text encoder"] == parameters(sd.text_encoder)
    assert plan.trainable == sum(p.numel() for p in run.trainable_params().values())


def test_checkpointing_and_half_precision_lower_the_planned_activations(tiny):
    full = memory_plan("osediff", config(tiny, "osediff", gt_size=128, batch_size=2))
    ckpt = memory_plan("osediff", config(tiny, "osediff", gt_size=128, batch_size=2, gradient_checkpointing=True))
    half = memory_plan("osediff", config(tiny, "osediff", gt_size=128, batch_size=2, mixed_precision="fp16"))
    small = memory_plan("osediff", config(tiny, "osediff", gt_size=64, batch_size=1))
    assert ckpt.activation_bytes() < full.activation_bytes() and half.activation_bytes() == full.activations // 2
    assert 6 < full.activation_bytes() / small.activation_bytes() < 10  # 8x the pixels
    assert full.total_bytes() == (full.weights_bytes() + 12 * full.trainable + full.activation_bytes())


def test_plan_prints_and_exits_before_any_weights(tiny, capsys, monkeypatch):
    from onestep_sr.sd import checkpoint as ck
    from training.cli import main

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(ck, "load_sd_model", no_weights)
    out = tiny["root"] / "planned"
    code = main(["guided", "--checkpoint", tiny["ckpt"], "--config-dir", tiny["config_dir"], "--data", tiny["data"],
                 "--out", str(out), "--gt-size", "64", "--plan"])
    stdout = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert stdout.startswith("memory plan (guided, sd1, crop 64, batch 1 per process") and "activations" in stdout
    code = main(["osediff", "--checkpoint", tiny["ckpt"], "--config-dir", tiny["config_dir"], "--data", tiny["data"],
                 "--out", str(out), "--adam-8bit", "--plan"])
    assert code == 2 and "bitsandbytes" in capsys.readouterr().err
