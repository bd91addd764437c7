"""The memory plan of ``osediff`` / ``guided`` (training/sd/memory_plan.py) against measurement, at
full SD 1.5 architecture size on the CPU, and the plan's table of what fits a 8 / 12 / 16 / 24 GB GPU.

Measurement: a diffusers folder with RANDOM weights built from the shipped SD 1.5 configs
(weights/configs/sd1; nothing downloaded; written once into --work), small crops. Each setting
runs in its own process: RSS after the imports (baseline), the plan, the run built (weights
loaded), the peak RSS reset (/proc/self/clear_refs) and ``--steps`` optimiser steps trained; the
measured figure is peak RSS - baseline, against the plan's total. On the CPU every term of the
plan is in RAM, as it would be in GPU memory (without the CUDA context).

    python benchmarks/bench_memory_plan.py                 # measure + the GPU table (about 10 min here)
    python benchmarks/bench_memory_plan.py --table-only    # the planner's table only (a few minutes)
    python benchmarks/bench_memory_plan.py --replan        # the measured settings planned again
"""
from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GIB = 2 ** 30
MEASURED = [  # (trainer, crop, batch, gradient checkpointing)
    ("osediff", 128, 1, False), ("osediff", 128, 1, True), ("osediff", 192, 2, False),
    ("guided", 128, 1, False), ("guided", 256, 2, False), ("guided", 256, 2, True)]
GPUS = (8, 12, 16, 24)
CUDA_CONTEXT_GIB = 1.0  # added to the plan for the table: context + allocator slack, an estimate
MARGIN = 1.15  # the plan was 4-13 % under the measured peak (CPU, this benchmark): the table adds 15 %


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def make_sd15_folder(folder: Path) -> Path:
    """A diffusers SD 1.5 folder with random weights from the shipped configs (once)."""
    if (folder / "done").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from onestep_sr.sd.checkpoint import _clip_config, config_dir_for, read_configs

    configs = read_configs(config_dir_for("sd1", "epsilon"))
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(configs["unet"]).save_pretrained(folder / "unet")
    AutoencoderKL.from_config(configs["vae"]).save_pretrained(folder / "vae")
    CLIPTextModel(_clip_config(configs["text_encoder"])).save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    (folder / "done").write_text("random weights, SD 1.5 architecture\n")
    return folder


def make_images(folder: Path, size: int = 288) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def config_for(trainer: str, crop: int, batch: int, checkpointing: bool, **options):
    from training.sd.guided import GuidedConfig
    from training.sd.osediff import OSEDiffConfig

    cls = GuidedConfig if trainer == "guided" else OSEDiffConfig
    return cls(gt_size=crop, batch_size=batch, gradient_checkpointing=checkpointing, log_every=1, warmup=0,
               **({"degradation": "bicubic"} if trainer == "osediff" else {}), **options)


def child(spec: dict) -> dict:
    """One measured setting (in its own process)."""
    import gc

    import torch

    from training.sd.memory_plan import memory_plan

    torch.set_num_threads(int(spec.get("threads", 2)))
    baseline = status("VmRSS")
    config = config_for(spec["trainer"], spec["crop"], spec["batch"], spec["checkpointing"],
                        checkpoint=spec["checkpoint"], data=spec["data"], out=spec["out"], steps=spec["steps"])
    plan = memory_plan(spec["trainer"], config)
    if spec["trainer"] == "guided":
        from training.sd.guided import GuidedRun as Run
    else:
        from training.sd.osediff import OSEDiffRun as Run
    run = Run(config)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    loaded = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from here
    started = time.perf_counter()
    run.train(progress=False)
    return {**spec, "baseline": baseline, "loaded": loaded, "peak": status("VmHWM"),
            "seconds_per_step": (time.perf_counter() - started) / spec["steps"], "plan": plan.as_dict(),
            "plan_weights_and_state": plan.total_bytes() - plan.activation_bytes()}


def replan(results: list[dict]) -> None:
    """The plan of each measured setting again, with the planner as it is now (no weights read)."""
    from training.sd.memory_plan import memory_plan

    for r in results:
        config = config_for(r["trainer"], r["crop"], r["batch"], r["checkpointing"], checkpoint=r["checkpoint"],
                            data=r["data"], out=r["out"], steps=r["steps"])
        r["plan"] = memory_plan(r["trainer"], config).as_dict()
        r["error"] = r["plan"]["total_bytes"] / r["measured"] - 1


def report(r: dict) -> str:
    return (f"{r['trainer']:8} crop {r['crop']:4} batch {r['batch']} ckpt {'on ' if r['checkpointing'] else 'off'}: plan "
            f"{r['plan']['total_bytes'] / GIB:6.2f} GiB (activations {r['plan']['activation_bytes'] / GIB:5.2f}), "
            f"measured peak - baseline {r['measured'] / GIB:6.2f} GiB (after loading "
            f"{(r['loaded'] - r['baseline']) / GIB:5.2f}), error {100 * r['error']:+.0f} %, "
            f"{r['seconds_per_step']:.0f} s/step")


def measure(args) -> list[dict]:
    work = Path(args.work)
    folder = make_sd15_folder(work / "sd15_random")
    data = make_images(work / "images")
    results = []
    for trainer, crop, batch, checkpointing in MEASURED:
        out = work / f"run_{trainer}_{crop}_{batch}_{int(checkpointing)}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        spec = {"trainer": trainer, "crop": crop, "batch": batch, "checkpointing": checkpointing, "steps": args.steps,
                "checkpoint": str(folder), "data": str(data), "out": str(out), "threads": args.threads}
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["measured"] = r["peak"] - r["baseline"]
        r["error"] = r["plan"]["total_bytes"] / r["measured"] - 1
        results.append(r)
        print(report(r), flush=True)
    return results


SETTINGS = (("no", False), ("no", True), ("fp16", False), ("fp16", True))  # (mixed precision, checkpointing)


def table(checkpoint: str = __file__) -> list[dict]:
    """The planner over the settings a GPU user picks from (SD 1.5, AdamW; no weights read: the
    family is given, so ``checkpoint`` is never opened)."""
    from training.sd.memory_plan import memory_plan

    rows = []
    for trainer, crop, batch in itertools.product(("osediff", "guided"), (256, 512), (1, 2, 4)):
        row = {"trainer": trainer, "crop": crop, "batch": batch, "gib": []}
        for precision, checkpointing in SETTINGS:
            config = config_for(trainer, crop, batch, checkpointing, checkpoint=checkpoint, data=".", out="unused",
                                mixed_precision=precision, family="sd1")
            row["gib"].append(round(MARGIN * memory_plan(trainer, config).total_bytes() / GIB + CUDA_CONTEXT_GIB, 2))
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """Plan x 1.15 + 1 GiB CUDA context per cell, and the smallest of 8 / 12 / 16 / 24 GB that holds it."""
    def cell(gib: float) -> str:
        fits = [g for g in GPUS if gib <= g * 1e9 / GIB]
        return f"{gib:.1f} GiB: {fits[0]} GB" if fits else f"{gib:.1f} GiB: > 24 GB"

    lines = ["| trainer | crop | batch per GPU | fp32 | fp32 + grad. ckpt | fp16 | fp16 + grad. ckpt |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['trainer']} | {r['crop']} | {r['batch']} | " + " | ".join(map(cell, r["gib"])) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_memory_plan"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--replan", action="store_true",
                        help="the plans of the measured settings in WORK/results.json again (after a planner change)")
    parser.add_argument("--json", default=None, help="write the results here (default WORK/results.json)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = Path(args.json or work / "results.json")
    if args.replan:
        measured = json.loads(results.read_text())["measured"]
        replan(measured)
        print("\n".join(map(report, measured)))
    else:
        measured = [] if args.table_only else measure(args)
    rows = table()
    print(markdown(rows))
    from onestep_sr.checkpoint import atomic_write_text

    atomic_write_text(results, json.dumps({"measured": measured, "table": rows}, indent=1))


if __name__ == "__main__":
    main()
