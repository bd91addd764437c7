"""Training and distillation of one-step students; one command line for all (``cli``:
``python -m training`` = ``onestep-sr train``).

Layout:
- ``common/``: what every method shares: HR/LR pairs and degradations, run folders (checkpoints,
  resume, EMA, log), metrics, evaluation on a folder, perceptual distances;
- ``resshift/``: ResShift-space methods, on the residual-shifting denoiser ``onestep_sr`` runs:
  the ResShift teacher, SinSR one-step distillation, YONOS scale distillation;
- ``sd/``: SD-space methods, on the user's Stable Diffusion checkpoint: OSEDiff one-step LoRAs.
"""
