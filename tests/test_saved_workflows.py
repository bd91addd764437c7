"""Saved workflows keep working: an API-format graph (a saved workflow sent to /prompt) names the
inputs a node had when it was saved, and ComfyUI refuses a graph that lacks a required input
("Required input is missing"). So an input added to an existing node is optional, with the default
that gives the old behaviour. Checked against the fake ComfyUI's /prompt validation
(``comfy_pack.api_inputs``); test_nodes_sd.py runs an old SD Upscale graph."""
from __future__ import annotations

import pytest

import comfy_pack
from comfy_pack import ValidationError

ALL_NODES = {"OneStepSR_LoadModel", "OneStepSR_Upscale", "OneStepSR_Encode", "OneStepSR_ResShiftSampler",
             "OneStepSR_Decode", "OneStepSR_ColorFix", "OneStepSR_SDUpscale", "OneStepSR_AsUpscaleModel"}


@pytest.fixture()
def comfy(tmp_path, monkeypatch):
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    module, nodes = comfy_pack.load_pack(tmp_path)
    yield type("Comfy", (), dict(nodes=nodes))
    comfy_pack.unload_pack()


# Each node's inputs when it was first released (git log -p nodes/): an API graph saved then has these.
# a3e4909 (the pack's first commit) for all but OneStepSR_SDUpscale (f1f2f93).
FIRST_INPUTS = {
    "OneStepSR_LoadModel": {"model_name", "dtype", "device"},
    "OneStepSR_Upscale": {"model", "image", "steps", "seed", "tile", "overlap", "color_fix", "scale"},
    "OneStepSR_Encode": {"model", "image"},
    "OneStepSR_ResShiftSampler": {"model", "latent", "sampler", "steps", "seed", "tile", "overlap"},
    "OneStepSR_Decode": {"model", "latent"},
    "OneStepSR_ColorFix": {"image", "reference", "method"},
    "OneStepSR_SDUpscale": {"model", "vae", "image", "positive", "clip", "scale", "tile", "overlap", "vae_tile",
                            "color_fix", "vae_lora", "vae_lora_strength"},  # f1f2f93; cb8e371 added guided_lora, guidance
    "OneStepSR_AsUpscaleModel": {"model", "strength"},  # issue 29
}
# Inputs added since (each optional, its default the old behaviour); a new input: add it here too.
ADDED_INPUTS = {
    "OneStepSR_SDUpscale": {"guided_lora", "guidance"},  # cb8e371
    "OneStepSR_Upscale": {"auto_strength", "strength", "noise"},  # issue 28: strength (auto); issue 29: noise
}


def _saved_graph_inputs(node: type, names: set[str]) -> dict:
    """An API graph's inputs ``names`` of ``node``: widget defaults, first options, a stand-in for links."""
    specs = {spec.id: spec for spec in node.GET_SCHEMA().inputs}
    return {name: specs[name].default if getattr(specs[name], "default", None) is not None
            else specs[name].options[0] if specs[name].io_type == "COMBO" else object() for name in names}


def test_api_graphs_saved_with_each_nodes_first_inputs_still_validate(comfy):
    """ComfyUI refuses an API graph (a saved workflow, /prompt) that lacks a required input ("Required
    input is missing"); so every input added since a node's release is optional, with a default."""
    assert set(FIRST_INPUTS) == set(comfy.nodes) == ALL_NODES  # a new node: add its first inputs here
    for node_id, first in FIRST_INPUTS.items():
        node = comfy.nodes[node_id]
        inputs = node.GET_SCHEMA().inputs
        assert first <= {spec.id for spec in inputs}, node_id  # none was renamed or removed
        assert {spec.id for spec in inputs} == first | ADDED_INPUTS.get(node_id, set()), node_id
        for spec in inputs:
            if spec.id not in first:
                assert spec.optional and getattr(spec, "default", None) is not None, f"{node_id}.{spec.id}"
        optional_sockets = {spec.id for spec in inputs if spec.optional and spec.id in first}
        for names in (first, first - optional_sockets):  # optional links may be absent from the graph
            assert set(comfy_pack.api_inputs(node, **_saved_graph_inputs(node, names))) == names
    sd = comfy.nodes["OneStepSR_SDUpscale"]
    with pytest.raises(ValidationError, match=r"\.vae: required_input_missing"):  # the check can fail
        comfy_pack.api_inputs(sd, **_saved_graph_inputs(sd, FIRST_INPUTS["OneStepSR_SDUpscale"] - {"vae"}))


def test_an_upscale_graph_saved_before_the_strength_inputs_runs_with_auto(comfy):
    """A /prompt graph of Load OneStep SR Model -> OneStep Upscale with the inputs both had at their
    release (no auto_strength, no strength): it validates, runs with the bundled model at auto
    (measured per image), equals the node given auto_strength on, and reports auto's choice; the
    IMAGE is still output 0, where the saved SaveImage link points."""
    import numpy as np
    import torch

    loader, upscale = comfy.nodes["OneStepSR_LoadModel"], comfy.nodes["OneStepSR_Upscale"]
    (model,) = comfy_pack.run_api(loader, model_name="onestep_default (bundled)", dtype="auto", device="auto")
    image = torch.from_numpy(np.random.default_rng(5).random((1, 16, 20, 3), dtype=np.float32))
    saved = dict(steps=1, seed=12345, tile=256, overlap=32, color_fix="wavelet", scale=4.0)
    assert set(saved) | {"model", "image"} == FIRST_INPUTS["OneStepSR_Upscale"]
    out, report = comfy_pack.run_api(upscale, model=model, image=image, **saved)
    assert out.shape == (1, 64, 80, 3)
    chosen = model.sr.last_strengths
    assert len(chosen) == 1 and chosen[0] is not None and report == f"restoration strength {chosen[0]:g} (auto)"
    again, _ = comfy_pack.run_api(upscale, model=model, image=image, auto_strength=True, strength=0.5, **saved)
    assert torch.equal(out, again)
