"""SD-space methods: one-step students built on the user's Stable Diffusion 1.x/2.x checkpoint
(OSEDiff: a LoRA trained with MSE + perceptual + VSD; ``osediff*`` modules)."""
