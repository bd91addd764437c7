"""The gradio page over :class:`AppService` (this module is the only one that imports gradio).

Upscale runs share one queue slot (``concurrency``, default 1), so several browsers never run
models side by side and out of memory; downloads have a slot of their own. Cancel stops the run
after the current network call (or drops it while it waits in the queue); the run then ends
normally, with the images finished so far in the gallery and a line saying where it stopped.
"""
from __future__ import annotations

import gradio as gr

from ..colorfix import COLOR_FIXES
from ..model import SCALE
from ..pipeline import Tiling
from .service import AppService, Cancelled, Settings

TITLE = "OneStep SR"
CSS = "#results .caption-label {font-size: 0.8em}"


def _choices_update(service: AppService, keep: str | None = None):
    choices = service.choices()
    sources = [source for _, source in choices]
    value = keep if keep in sources else service.default_source()
    return gr.update(choices=choices, value=value)


def build(service: AppService, concurrency: int = 1) -> gr.Blocks:
    default = service.default_source()
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nDiffusion super-resolution in one network step. Upload images, pick a model, "
                    "press **Upscale**.")
        results_state = gr.State([])    # [(before path, after path), ...] of the last run
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="uploads")
                with gr.Row():
                    model = gr.Dropdown(service.choices(), value=default, label="Model", elem_id="model", scale=4)
                    refresh = gr.Button("Refresh", size="sm", scale=1)
                status = gr.Markdown(service.status(default) if default else "no model found", elem_id="model-status")
                download = gr.Button("Download model", visible=bool(default and service.missing(default)),
                                     elem_id="download")
                steps = gr.Dropdown(service.step_choices(default) if default else [],
                                    value=service.step_choices(default)[0][1] if default else None,
                                    label="Steps", elem_id="steps")
                with gr.Row():
                    seed = gr.Number(-1, label="Seed (-1: random)", precision=None, step=1, elem_id="seed")
                    scale = gr.Slider(1, 2 * SCALE, value=SCALE, step=0.25, label="Scale", elem_id="scale")
                with gr.Row():
                    tile = gr.Slider(64, 512, value=Tiling.tile, step=64, label="Tile (input pixels)", elem_id="tile")
                    color_fix = gr.Radio(list(COLOR_FIXES), value="none", label="Colour fix", elem_id="color-fix")
                knob = bool(default) and service.has_strength(default)   # only models with two weight sets
                with gr.Row():
                    auto_strength = gr.Checkbox(True, label="Auto restoration strength (measured per image)",
                                                visible=knob, elem_id="auto-strength")
                    strength = gr.Slider(0, 1, value=0.5, step=0.05, interactive=False, visible=knob,
                                         label="Restoration strength",
                                         info="0 = faithful to the input (keeps grain); 1 = full restoration "
                                              "(removes noise and JPEG artefacts, smooths fine texture)",
                                         elem_id="strength")
                with gr.Row():
                    run = gr.Button("Upscale", variant="primary", elem_id="run")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column(scale=2):
                compare = gr.ImageSlider(label="Before / after (select a result below)", type="filepath",
                                         elem_id="compare")
                gallery = gr.Gallery(label="Results", columns=4, object_fit="contain", elem_id="results")
                outputs = gr.File(label="Download results", file_count="multiple", interactive=False,
                                  elem_id="downloads")
                log = gr.Markdown(elem_id="log")

        def session_of(request: gr.Request | None) -> str:
            return request.session_hash if request is not None and request.session_hash else "local"

        def on_model(source):
            if not source:
                return "no model selected", gr.update(visible=False), gr.update(choices=[], value=None)
            try:
                choices = service.step_choices(source)
            except (ValueError, KeyError, OSError) as exc:   # e.g. the file was removed since the list was made
                return f"unavailable: {exc}", gr.update(visible=False), gr.update(choices=[], value=None)
            return (service.status(source), gr.update(visible=bool(service.missing(source))),
                    gr.update(choices=choices, value=choices[0][1]))

        def on_refresh(source):
            update = _choices_update(service, source)
            return (update,) + on_model(update["value"])

        def on_download(source, progress=gr.Progress()):
            try:
                text = service.download(source, lambda f, what: progress(f, desc=what))
            except Exception as exc:  # noqa: BLE001 - shown in the page; the server goes on
                raise gr.Error(f"download failed: {exc}") from exc
            return text, gr.update(visible=bool(service.missing(source)))

        def on_strength_model(source):
            shown = bool(source) and service.has_strength(source)
            return gr.update(visible=shown), gr.update(visible=shown)

        def on_auto_strength(auto):
            return gr.update(interactive=not auto)

        def on_run(paths, source, steps_value, seed_value, tile_value, fix, scale_value, auto_value, strength_value,
                   request: gr.Request, progress=gr.Progress()):
            if not paths:
                raise gr.Error("upload one or more images first")
            if not source:
                raise gr.Error("pick a model first")
            # values as given: the service checks them by the engine's rules (never rounded here); the
            # strength controls are hidden for a model without the knob, so they do not apply to it
            manual = not auto_value and service.has_strength(source)
            settings = Settings(steps=steps_value or "1", seed=-1 if seed_value is None else seed_value,
                                tile=tile_value, color_fix=fix, scale=scale_value,
                                strength=strength_value if manual else "auto")
            done, captions, pairs, lines = [], [], [], []
            session = session_of(request)
            try:
                for result in service.upscale_files(list(paths), source, settings, session,
                                                    lambda f, what: progress(f, desc=what)):
                    lines.append(("- " if result.error is None else "- **failed:** ") + result.line())
                    if result.output is not None:
                        done.append(str(result.output))
                        captions.append((str(result.preview), f"{result.name} -> {result.size[0]}x{result.size[1]}"))
                        pairs.append((str(result.before), str(result.after)))
                    yield _view(done, captions, pairs, lines)
            except Cancelled as exc:
                lines.append(f"- **{exc}**")
                yield _view(done, captions, pairs, lines)
            except Exception as exc:  # noqa: BLE001 - model/option errors: a message, the server goes on
                raise gr.Error(str(exc)) from exc

        def _view(done, captions, pairs, lines):
            slider = pairs[-1] if pairs else None
            return captions, done or None, slider, pairs, "\n".join(lines)

        def on_select(pairs, event: gr.SelectData):
            return pairs[event.index] if pairs and event.index < len(pairs) else None

        def on_arm(request: gr.Request):
            service.arm(session_of(request))

        def on_cancel(request: gr.Request):
            service.cancel(session_of(request))

        demo.load(on_refresh, model, [model, status, download, steps])   # each page load lists the folders anew
        model.change(on_model, model, [status, download, steps])
        model.change(on_strength_model, model, [auto_strength, strength])
        auto_strength.change(on_auto_strength, auto_strength, strength)
        refresh.click(on_refresh, model, [model, status, download, steps])
        download.click(on_download, model, [status, download], concurrency_limit=1, concurrency_id="download")
        run.click(on_arm, None, None, queue=False).then(
            on_run, [files, model, steps, seed, tile, color_fix, scale, auto_strength, strength],
            [gallery, outputs, compare, results_state, log],
            concurrency_limit=concurrency, concurrency_id="upscale")
        cancel.click(on_cancel, None, None, queue=False)
        gallery.select(on_select, results_state, compare)
    return demo
