"""ResShift-space methods: they train or distil the residual-shifting denoiser (pixel or VQ-f4
latent space) that ``onestep_sr`` runs: the ResShift teacher, SinSR one-step distillation and
YONOS scale distillation, all in one training loop (``trainer``) with their losses (``losses``)."""
