"""``onestep-sr app`` / ``python -m onestep_sr.app``: a small web app over the engine, for users
with neither ComfyUI nor A1111. Needs the ``app`` extra (gradio); nothing else in the package
imports gradio.

    onestep-sr app                       # http://127.0.0.1:7860
    onestep-sr app --port 8000 --models-dir D:/models/OneStepSR --max-pixels 2000000

It serves on 127.0.0.1 only unless ``--host`` says otherwise; ``--share`` (a public gradio link) is
off unless asked for.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..options import whole_arg
from ..registry import models_dir
from .service import DEFAULT_MAX_PIXELS, AppService

DEFAULT_PORT = 7860
#: How to install the app extra, as the README says (run in the OneStep SR folder).
INSTALL = 'python3 -m pip install -c constraints.txt -e ".[app]"'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this computer only)")
    parser.add_argument("--port", type=whole_arg(1, 65535), default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--models-dir", action="append", type=Path, default=None,
                        help="models folder (repeatable; downloads go into the first; default: ONESTEP_SR_MODELS "
                             "or ~/.cache/onestep_sr/models)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where results are written (default: a folder in the system's temp folder)")
    parser.add_argument("--max-pixels", type=whole_arg(1), default=DEFAULT_MAX_PIXELS,
                        help=f"refuse uploads with more input pixels than this (default {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--max-upload-mb", type=whole_arg(1), default=200, help="largest upload in MB (default 200)")
    parser.add_argument("--concurrency", type=whole_arg(1), default=1,
                        help="upscales run at the same time (default 1; others wait in the queue)")
    parser.add_argument("--queue-size", type=whole_arg(1), default=32,
                        help="longest queue before new runs are refused")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when available)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                        help="weights' dtype (default fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--offline", action="store_true", default=None, help="never download weights")


def service_from(args: argparse.Namespace) -> AppService:
    folders = args.models_dir or [models_dir()]
    extra = {"output_dir": args.output_dir} if args.output_dir else {}
    return AppService(folders=folders, max_pixels=args.max_pixels, device=args.device, dtype=args.dtype,
                      offline=args.offline, **extra)


def launch(args: argparse.Namespace, block: bool = True):
    """Build and start the app; with ``block=False`` return ``(demo, url)`` with the server running."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from .ui import CSS, build
    except ImportError as exc:
        raise SystemExit(f"onestep-sr app needs gradio, the app extra: in the OneStep SR folder run {INSTALL} "
                         f"(GPU users: without -c constraints.txt) ({exc})") from None
    service = service_from(args)
    demo = build(service, concurrency=args.concurrency)
    demo.queue(max_size=args.queue_size)
    try:
        _, url, _ = demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                                max_file_size=f"{args.max_upload_mb}mb", allowed_paths=[str(service.output_dir)],
                                prevent_thread_lock=not block, show_error=True, css=CSS, quiet=not block)
    except OSError as exc:  # the port is taken, or the address cannot be served
        raise SystemExit(f"onestep-sr app: cannot serve on {args.host}:{args.port} ({exc}); "
                         "pass another --port") from None
    return demo, url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onestep_sr.app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    launch(parser.parse_args(sys.argv[1:] if argv is None else argv))
    return 0
