"""Training and distillation of one-step students (ResShift teacher, SinSR, OSEDiff, ...)."""
