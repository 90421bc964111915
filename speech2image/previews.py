"""Previews of images still being denoised, for streaming calls: cheap, and no extra weights.

The latents of Stable Diffusion's VAE map to RGB through a fixed linear projection (4 latent
channels -> 3 colours, plus a bias), the one ComfyUI and others use for live previews; a preview
is one matrix product per image and a small JPEG, against a VAE decode for the real image. The
projection is the model family's, or the model's own when its directory has one
(``latent_rgb_projection.json``, as devtools/train_world_model.py writes for a VAE trained from
scratch); a model without one (other latent channel counts) gets progress events but no previews.
"""

import io
import json
from pathlib import Path
from typing import Optional, Sequence, Tuple

PREVIEW_MIME_TYPE = 'image/jpeg'
PREVIEW_QUALITY = 70
PREVIEW_MAX_SIDE = 256
LATENT_CHANNELS = 4
# (per latent channel: its R, G, B weights; the RGB bias), for latents as the pipeline holds
# them (scaled by the VAE's scaling factor). Values from ComfyUI's latent_formats.py.
STABLE_DIFFUSION_PROJECTION = (
    (
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    (0.0, 0.0, 0.0),
)
STABLE_DIFFUSION_XL_PROJECTION = (
    (
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    (0.1084, -0.0175, -0.0011),
)
Projection = Tuple[Sequence[Sequence[float]], Sequence[float]]
# A model directory's own projection: {"factors": [[r, g, b] per latent channel], "bias": [r, g, b]}.
PROJECTION_FILE = 'latent_rgb_projection.json'


def projection_for(pipeline) -> Optional[Projection]:
    """The latent-to-RGB projection for a diffusers pipeline: its directory's own, else its model
    family's, else None."""
    own = Path(getattr(pipeline, 'name_or_path', None) or '') / PROJECTION_FILE
    if own.is_file():
        saved = json.loads(own.read_text())
        return saved['factors'], saved['bias']
    if pipeline.unet.config.in_channels != LATENT_CHANNELS:
        return None
    if 'XL' in type(pipeline).__name__:
        return STABLE_DIFFUSION_XL_PROJECTION
    return STABLE_DIFFUSION_PROJECTION


def preview_jpeg(latents, projection: Projection, width: int, height: int) -> bytes:
    """One image's latents (a torch tensor, channels x h x w) as a JPEG of at most
    ``PREVIEW_MAX_SIDE`` pixels a side, in the final image's aspect ratio."""
    import torch
    from PIL import Image

    factors, bias = projection
    weights = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum('chw,cr->hwr', latents.float().cpu(), weights) + torch.tensor(bias)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    scale = min(1.0, PREVIEW_MAX_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(pixels, 'RGB').resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', quality=PREVIEW_QUALITY)
    return buffer.getvalue()
