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
             "OneStepSR_Decode", "OneStepSR_ColorFix", "OneStepSR_SDUpscale"}


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
        for spec in inputs:
            if spec.id not in first:
                assert spec.optional and getattr(spec, "default", None) is not None, f"{node_id}.{spec.id}"
        optional_sockets = {spec.id for spec in inputs if spec.optional and spec.id in first}
        for names in (first, first - optional_sockets):  # optional links may be absent from the graph
            assert set(comfy_pack.api_inputs(node, **_saved_graph_inputs(node, names))) == names
    sd = comfy.nodes["OneStepSR_SDUpscale"]
    with pytest.raises(ValidationError, match=r"\.vae: required_input_missing"):  # the check can fail
        comfy_pack.api_inputs(sd, **_saved_graph_inputs(sd, FIRST_INPUTS["OneStepSR_SDUpscale"] - {"vae"}))
