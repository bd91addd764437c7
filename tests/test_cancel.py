"""Cancel points inside the networks (``onestep_sr.models.cancel``): a cancel requested during a VQ
decode stops inside it, not after the tile; without a cancel the result is bit-identical."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onestep_sr import load_model
from onestep_sr.models import cancel, layers
from onestep_sr.models.autoencoder import ResnetBlock
from onestep_sr.models.cancel import cancel_point, cancel_scope


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def model(goldens):
    return load_model((goldens / "unet.safetensors", goldens / "vq.safetensors"), device="cpu")


@pytest.fixture()
def every_point(monkeypatch):
    """Checks at every cancel point (no throttling) and a chunked VQ attention even on small tiles."""
    monkeypatch.setattr(cancel, "CHECK_INTERVAL_S", 0.0)
    monkeypatch.setattr(layers, "ATTENTION_CHUNK", 1024)


def _image(h: int = 40, w: int = 56) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)


class DecoderWatch:
    """Counts the decoder's residual blocks as they start, and whether the decoder is running."""

    def __init__(self, model):
        self.blocks = [m for m in model.autoencoder.decoder.modules() if isinstance(m, ResnetBlock)]
        self.started = 0
        self.decoding = False
        self.handles = [model.autoencoder.decoder.register_forward_pre_hook(self._enter)]
        self.handles += [b.register_forward_pre_hook(self._block) for b in self.blocks]

    def _enter(self, *_):
        self.decoding, self.started = True, 0

    def _block(self, *_):
        self.started += 1

    def close(self):
        for handle in self.handles:
            handle.remove()


def test_scope_calls_its_check_only_inside_and_only_in_its_thread():
    calls = []
    cancel_point()  # no scope: nothing to call
    with cancel_scope(lambda: calls.append(1), interval=0):
        cancel_point()
        other = threading.Thread(target=cancel_point)  # another thread has no scope
        other.start()
        other.join()
        with cancel_scope(lambda: calls.append(2), interval=0):  # nested: the inner one wins
            cancel_point()
        cancel_point()
        with cancel_scope(None):  # no check of its own: the outer one still applies
            cancel_point()
    cancel_point()
    assert calls == [1, 2, 1, 1]
    with cancel_scope(lambda: calls.append(3), interval=3600):  # throttled
        for _ in range(100):
            cancel_point()
    assert calls == [1, 2, 1, 1]


@pytest.mark.parametrize("n, heads, dim, bias", [(4096, 1, 64, False), (5000, 1, 32, False), (3300, 2, 16, False),
                                                 (4096, 1, 16, True)])
def test_chunked_cpu_attention_is_bit_identical(monkeypatch, n, heads, dim, bias):
    monkeypatch.setattr(layers, "ATTENTION_CHUNK", 1024)
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, heads, n, dim, generator=g) for _ in range(3))
    mask = torch.randn(n, n, generator=g) if bias else None
    checks = []
    with cancel_scope(lambda: checks.append(1), interval=0):
        out = layers.attention_fp32(q, k, v, mask)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert len(checks) == (0 if bias else len(range(0, n - 768, 1024)))  # a cancel point per chunk


def test_a_cancel_during_the_vq_decode_stops_inside_it(model, every_point):
    """One tile per stage (encode, denoise, decode: ``done`` 1, 2, 3). Record, at every check
    inside the decode, how many of the decoder's residual blocks had started; then raise at
    several of those checks and see that the decoder stopped right there, with no output."""
    image = _image()
    watch = DecoderWatch(model)
    try:
        at_check = []

        def record(done, total):
            if watch.decoding and done == 2:
                at_check.append(watch.started)

        full = model.upscale(image, progress=record)
        assert at_check and at_check[-1] == len(watch.blocks)  # every block reached a check
        assert at_check.count(1) >= 3  # first block: its start, its middle, the chunked mid attention

        for n in (1, 3, len(at_check) // 2, len(at_check)):
            watch.decoding = False
            seen, in_decode = [], []

            def stop(done, total, n=n):
                seen.append(done)
                if watch.decoding and done == 2:
                    in_decode.append(watch.started)
                    if len(in_decode) == n:
                        raise Stop

            with pytest.raises(Stop):
                model.upscale(image, progress=stop)
            assert watch.started == at_check[n - 1]  # stopped at that check: no later block ran
            assert 3 not in seen  # the decode tile never finished
        assert np.array_equal(model.upscale(image), full)  # still usable, same result
    finally:
        watch.close()


def test_without_a_cancel_the_result_is_bit_identical(model, monkeypatch):
    """Checks at every point and a chunked attention give exactly the plain result (no callback,
    attention in one call), tiled and untiled."""
    image = _image()
    for options in ({}, dict(vq_tile=32)):
        monkeypatch.setattr(layers, "ATTENTION_CHUNK", 10**9)
        plain = model.upscale(image, **options)
        monkeypatch.setattr(layers, "ATTENTION_CHUNK", 1024)
        monkeypatch.setattr(cancel, "CHECK_INTERVAL_S", 0.0)
        checked = []
        out = model.upscale(image, progress=lambda done, total: checked.append(done), **options)
        monkeypatch.setattr(cancel, "CHECK_INTERVAL_S", 0.25)
        assert np.array_equal(out, plain)
        assert len(checked) > 3 * len(set(checked))  # many checks besides the per-tile calls


def test_the_stage_methods_stop_inside_the_network_too(model, every_point):
    """``decode`` (the ComfyUI latent path): a cancel at the first check stops in the first block."""
    latent = model.sample(model.encode(torch.from_numpy(_image()).permute(2, 0, 1)[None].float() / 255))
    watch = DecoderWatch(model)
    calls = []

    def cancel_now(done, total):
        calls.append(done)
        raise Stop

    try:
        with pytest.raises(Stop):
            model.decode(latent, progress=cancel_now)
    finally:
        watch.close()
    assert calls == [0] and watch.started == 1
