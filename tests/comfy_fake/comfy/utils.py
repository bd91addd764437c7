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
    """``function`` over tiles of B x C x H x W ``samples``, as ComfyUI 0.3.64 tiles (its
    ``tiled_scale_multidim``, 2-D): a batch item that fits one tile is one call; otherwise tiles start
    at 0, stride, 2 stride, ... (stride = tile - overlap, starts below size - overlap), the last one
    cut short at the border (never moved back); each result is weighted by a linear ramp
    (t + 1) / feather over ``feather = round(overlap * upscale_amount)`` pixels at all four edges of
    the tile, and the sum is divided by the sum of the weights."""
    import torch

    b, _, h, w = samples.shape
    oh, ow = round(h * upscale_amount), round(w * upscale_amount)
    output = torch.empty(b, out_channels, oh, ow, device=output_device)
    feather = round(overlap * upscale_amount)
    for i in range(b):
        item = samples[i:i + 1]
        if h <= tile_y and w <= tile_x:
            output[i:i + 1] = function(item).to(output_device)
            if pbar is not None:
                pbar.update(1)
            continue
        total = torch.zeros(1, out_channels, oh, ow, device=output_device)
        weights = torch.zeros_like(total)
        ys = range(0, h - overlap, tile_y - overlap) if h > tile_y else [0]
        xs = range(0, w - overlap, tile_x - overlap) if w > tile_x else [0]
        for y in ys:
            for x in xs:
                out = function(item[:, :, y:y + tile_y, x:x + tile_x]).to(output_device)
                mask = torch.ones_like(out)
                for dim in (2, 3):
                    if feather < mask.shape[dim]:
                        for t in range(feather):
                            mask.narrow(dim, t, 1).mul_((t + 1) / feather)
                            mask.narrow(dim, mask.shape[dim] - 1 - t, 1).mul_((t + 1) / feather)
                oy, ox = round(y * upscale_amount), round(x * upscale_amount)
                total[:, :, oy:oy + out.shape[2], ox:ox + out.shape[3]] += out * mask
                weights[:, :, oy:oy + out.shape[2], ox:ox + out.shape[3]] += mask
                if pbar is not None:
                    pbar.update(1)
        output[i:i + 1] = total / weights
    return output
