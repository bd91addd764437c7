"""Parts every training method shares: HR/LR pairs (``data``, ``degradations``), run folders
(``runs``: checkpoints, resume, EMA, CSV log), metrics (``metrics``: PSNR/SSIM on Y), evaluation on
a folder (``evaluate``) and perceptual distances (``perceptual``, ``lpips_vgg``)."""
