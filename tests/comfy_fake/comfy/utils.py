"""Fake of comfy.utils: the progress bar and its global hook (set by ComfyUI's server to send
progress events and check for interruption)."""
PROGRESS_BAR_ENABLED = True
PROGRESS_BAR_HOOK = None


def set_progress_bar_global_hook(function):
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        if value > self.total:
            value = self.total
        self.current = value
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)


def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
    import safetensors.torch
    import torch

    if ckpt.lower().endswith((".safetensors", ".sft")):
        sd = safetensors.torch.load_file(ckpt, device=str(device or "cpu"))
        metadata = None
    else:
        sd = torch.load(ckpt, map_location=device or "cpu", weights_only=True)
        metadata = None
    return (sd, metadata) if return_metadata else sd


def get_attr(obj, attr):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def get_tiled_scale_steps(width, height, tile_x, tile_y, overlap):
    rows = 1 if height <= tile_y else -(-(height - overlap) // (tile_y - overlap))
    cols = 1 if width <= tile_x else -(-(width - overlap) // (tile_x - overlap))
    return rows * cols


def tiled_scale(samples, function, tile_x=64, tile_y=64, overlap=8, upscale_amount=4, out_channels=3,
                output_device="cpu", pbar=None):
    """``function`` over overlapping tiles of B x C x H x W ``samples`` with a linear feather over the
    overlap (the fake's own blend; ComfyUI's differs in detail), output scaled by ``upscale_amount``."""
    import torch

    def starts(size, tile):
        if size <= tile:
            return [0]
        stride = tile - overlap
        out = list(range(0, size - tile, stride)) + [size - tile]
        return sorted(set(out))

    b, _, h, w = samples.shape
    oh, ow = round(h * upscale_amount), round(w * upscale_amount)
    output = torch.zeros(b, out_channels, oh, ow, device=output_device)
    weights = torch.zeros(b, 1, oh, ow, device=output_device)
    for y in starts(h, tile_y):
        for x in starts(w, tile_x):
            piece = samples[:, :, y:y + tile_y, x:x + tile_x]
            ph, pw = piece.shape[-2:]
            out = function(piece).to(output_device)
            mask = torch.ones(1, 1, out.shape[-2], out.shape[-1], device=output_device)
            feather = round(overlap * upscale_amount)
            for t in range(feather):
                value = (t + 1) / (feather + 1)
                if y > 0:
                    mask[:, :, t, :] = torch.minimum(mask[:, :, t, :], torch.tensor(value))
                if y + ph < h:
                    mask[:, :, -1 - t, :] = torch.minimum(mask[:, :, -1 - t, :], torch.tensor(value))
                if x > 0:
                    mask[:, :, :, t] = torch.minimum(mask[:, :, :, t], torch.tensor(value))
                if x + pw < w:
                    mask[:, :, :, -1 - t] = torch.minimum(mask[:, :, :, -1 - t], torch.tensor(value))
            oy, ox = round(y * upscale_amount), round(x * upscale_amount)
            output[:, :, oy:oy + out.shape[-2], ox:ox + out.shape[-1]] += out * mask
            weights[:, :, oy:oy + out.shape[-2], ox:ox + out.shape[-1]] += mask
            if pbar is not None:
                pbar.update(1)
    return output / weights
