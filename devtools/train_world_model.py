"""Train the offline text-to-image model on pictures of its world (speech2image/world.py).

A recipe in five steps: arguments, data, the VAE, the UNet with the text encoder, save. The result
is an ordinary diffusers Stable Diffusion directory (AutoencoderKL with a 4x downsampling,
UNet2DConditionModel with cross-attention, CLIP BPE tokenizer, CLIPTextModel, DPM-Solver++), which
``AutoPipelineForText2Image.from_pretrained`` loads like any checkpoint.

    python -m devtools.train_world_model --output-dir weights/shapes-world

``--resume`` goes on from the checkpoint in ``--output-dir`` (its VAE as it is; the UNet and text
encoder from their saved EMA weights, with a fresh optimizer, and the learning rate schedule
where it stopped) up to ``--unet-steps``.

Seeded: the same command on the same software gives the same weights. Runs on CPU (2 cores: about
90 minutes with the defaults, weights/README.md); ``--device cuda`` runs the same recipe on a GPU.
"""

import argparse
import copy
import json
import math
import random
import string
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from devtools.world_render import render
from devtools.world_tokenizer import build_world_tokenizer
from speech2image.previews import PROJECTION_FILE
from speech2image.world import HELD_OUT, IMAGE_SIDE, SIZES, Scene, caption, random_scene

TEXT_ENCODER = dict(
    hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=3
)
# 8 latent channels, not Stable Diffusion's 4: at the same training time the VAE gave back the
# things' colours and shapes far more often (judged colour 96% against 77%, thing 68% against 53%).
LATENT_CHANNELS = 8
LATENT_DOWNSAMPLING = 4  # pixels per latent, each way: the VAE's three blocks
UNET = dict(
    sample_size=IMAGE_SIDE // LATENT_DOWNSAMPLING,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    layers_per_block=1,
    block_out_channels=(32, 64, 128),
    # Cross-attention at 8x8 and 4x4 latents: at 16x16 it tripled the cost of a training step.
    down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'),
    up_block_types=('CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'),
    cross_attention_dim=TEXT_ENCODER['hidden_size'],
    attention_head_dim=8,
    # The pooled text also joins the timestep embedding, so every block (the 16x16 one without
    # cross-attention included) hears the words, as in DeepFloyd IF.
    addition_embed_type='text',
    addition_embed_type_num_heads=4,
    norm_num_groups=32,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=('DownEncoderBlock2D',) * 3,
    up_block_types=('UpDecoderBlock2D',) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=16,
    sample_size=IMAGE_SIDE,
)
# Stable Diffusion 1.x's noise schedule rescaled to zero signal at the last step (Lin et al. 2024,
# "Common Diffusion Noise Schedules and Sample Steps are Flawed"), with v-prediction, for training
# and for the saved scheduler. At SD's own last step (signal 0.068) the background and the place
# of a thing in a 16x16 latent still show through the noise, so the model learned to read them
# there rather than from the words, and at sampling took them from the random start: the same
# seed drew the same background whatever place the prompt named.
NOISE_SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule='scaled_linear',
    rescale_betas_zero_snr=True,
    prediction_type='v_prediction',
)
# Captions leave attributes unsaid this often, so a prompt may name only some of them; an empty
# caption trains the unconditional prediction that classifier-free guidance needs.
UNSAID = {'colour': 0.1, 'place': 0.12, 'position': 0.25, 'size': 0.15}
EMPTY_CAPTION = 0.1
# Made-up words in captions this often: unknown words fall apart into byte tokens, and the model
# learns to ignore them.
UNKNOWN_WORD = 0.2
VAE_KL_WEIGHT = 1e-6
# Things cover a small part of a picture; their pixels (and 2 px around them) weigh this much
# more in the VAE's and the UNet's losses, so they learn the things, not only the backgrounds.
FOREGROUND_WEIGHT = 4.0
FOREGROUND_MARGIN = 2
VAE_LEARNING_RATE = 1e-3
EMA_DECAY = 0.999
# Where a thing stands and what it is are decided at the noisiest steps, where nothing of the
# picture shows yet but the words; with timesteps drawn uniformly the model learned colours and
# places there, never the "left" or the "star". Half of each batch's timesteps come from the
# noisiest 30% of the schedule (as SD3 shifts its timesteps towards noise).
HIGH_NOISE_SHARE = 0.5
HIGH_NOISE_FROM = 700
WARMUP_STEPS = 200
PROJECTION_PICTURES = 2_000  # the first pictures of the data set fit the preview projection


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output-dir', type=Path, required=True)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--scenes', type=int, default=30_000, help='pictures rendered once')
    parser.add_argument('--vae-steps', type=int, default=1_800)
    parser.add_argument('--vae-batch-size', type=int, default=16)
    parser.add_argument('--unet-steps', type=int, default=6_800)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--learning-rate', type=float, default=1e-3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0: torch default)')
    parser.add_argument('--checkpoint-every', type=int, default=500)
    parser.add_argument(
        '--resume',
        action='store_true',
        help='go on from the checkpoint saved in --output-dir up to --unet-steps',
    )
    parser.add_argument(
        '--vae-from',
        type=Path,
        help='take the VAE saved in this model directory instead of training one',
    )
    parser.add_argument(
        '--projection-only',
        action='store_true',
        help='only (re)write the preview projection of the VAE saved in --output-dir',
    )
    return parser.parse_args()


def render_dataset(count: int, seed: int):
    """``count`` pictures of random scenes outside the held-out pairs: uint8 (N, 3, H, W), the
    things' coverage as uint8 (N, 1, H, W), and the scenes."""
    rng = random.Random(seed)
    scenes, pictures, masks = [], [], []
    while len(scenes) < count:
        scene = random_scene(rng)
        if (scene.colour, scene.thing) in HELD_OUT:
            continue
        picture, mask = render(scene, rng)
        scenes.append(scene)
        pictures.append(picture.transpose(2, 0, 1))
        masks.append((mask[None] * 255).round().astype(np.uint8))
    return torch.from_numpy(np.stack(pictures)), torch.from_numpy(np.stack(masks)), scenes


def to_unit(pictures: torch.Tensor) -> torch.Tensor:
    return pictures.float() / 127.5 - 1.0


def training_caption(scene: Scene, rng: random.Random) -> str:
    """A caption of ``scene`` that may leave attributes unsaid, or an empty one."""
    if rng.random() < EMPTY_CAPTION:
        return ''
    unsaid = {key: None for key, p in UNSAID.items() if rng.random() < p}
    if scene.size == 'medium' or not SIZES[scene.size]:
        unsaid['size'] = None
    text = caption(scene.with_(**unsaid), rng)
    if rng.random() < UNKNOWN_WORD:
        words = text.split()
        made_up = ''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
        words.insert(rng.randint(0, len(words)), made_up)
        text = ' '.join(words)
    return text


def pixel_weights(masks: torch.Tensor) -> torch.Tensor:
    """The VAE loss's weight of each pixel: 1, and FOREGROUND_WEIGHT more on and around things."""
    near_things = F.max_pool2d(
        masks.float() / 255, 2 * FOREGROUND_MARGIN + 1, stride=1, padding=FOREGROUND_MARGIN
    )
    return 1 + FOREGROUND_WEIGHT * near_things


def train_vae(pictures, masks, args, log):
    """Step 3: an AutoencoderKL that reconstructs the world's pictures (L1 + MSE, weighted
    towards the things, and a small KL)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**VAE).to(args.device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=VAE_LEARNING_RATE)
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.vae_steps + 1):
        index = torch.randint(len(pictures), (args.vae_batch_size,), generator=generator)
        batch = to_unit(pictures[index]).to(args.device)
        weights = pixel_weights(masks[index]).to(args.device)
        posterior = vae.encode(batch).latent_dist
        error = vae.decode(posterior.sample()).sample - batch
        loss = (weights * (error.abs() + error**2)).mean() + VAE_KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            log('vae', step, loss.item())
    return vae.eval()


@torch.no_grad()
def encode_dataset(vae, pictures, device, batch_size=256):
    """The latent means of every picture, and the scaling factor that gives them unit variance."""
    latents = torch.cat(
        [
            vae.encode(to_unit(pictures[i : i + batch_size]).to(device)).latent_dist.mean.cpu()
            for i in range(0, len(pictures), batch_size)
        ]
    )
    return latents, 1.0 / latents.std().item()


@torch.no_grad()
def fit_latent_projection(latents, pictures) -> dict:
    """The least-squares linear map from (scaled) latents to the pictures' colours in [-1, 1]
    at latent resolution: what speech2image/previews.py draws live previews with."""
    factor = pictures.shape[-1] // latents.shape[-1]
    colours = F.avg_pool2d(to_unit(pictures), factor)
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y = colours.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x, y).solution
    return {'factors': solution[:-1].tolist(), 'bias': solution[-1].tolist()}


def new_denoiser(tokenizer):
    """A UNet and a text encoder, randomly initialised."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TEXT_ENCODER,
        )
    )
    return UNet2DConditionModel(**UNET), text_encoder


def saved_denoiser(directory: Path):
    """The UNet and text encoder of the checkpoint in ``directory`` (its EMA weights)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    return (
        saved_diffusers_model(UNet2DConditionModel, directory / 'unet'),
        CLIPTextModel.from_pretrained(directory / 'text_encoder'),
    )


def saved_diffusers_model(model_class, directory: Path):
    """A diffusers model saved in ``directory``, built from its config and weights: unlike
    ``from_pretrained`` it does not note ``directory`` in the config it saves again."""
    from safetensors.torch import load_file

    model = model_class.from_config(model_class.load_config(directory))
    model.load_state_dict(load_file(directory / 'diffusion_pytorch_model.safetensors'))
    return model


def training_timesteps(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` timesteps in [0, 1000): uniform, and a HIGH_NOISE_SHARE of them from
    [HIGH_NOISE_FROM, 1000)."""
    uniform = torch.randint(0, 1000, (count,), generator=generator)
    noisiest = torch.randint(HIGH_NOISE_FROM, 1000, (count,), generator=generator)
    return torch.where(torch.rand(count, generator=generator) < HIGH_NOISE_SHARE, noisiest, uniform)


def train_unet(latents, masks, scenes, denoiser, first_step, tokenizer, args, log):
    """Step 4: the UNet and the text encoder, together, on noised latents and their captions,
    from ``first_step`` to ``args.unet_steps``; the loss is the pixel weights (pooled to the
    latents' size) times the squared error of the predicted velocity."""
    from diffusers import DDPMScheduler

    unet, text_encoder = (model.to(args.device).train() for model in denoiser)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, **NOISE_SCHEDULE)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=1e-2)
    # Warm-up at the start of every run: a resumed run's optimizer starts with no moments.
    # LambdaLR counts calls from 0; update ``first_step + s`` follows the one cosine schedule.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / WARMUP_STEPS)
            * 0.5
            * (1 + math.cos(math.pi * min(first_step - 1 + s, args.unet_steps) / args.unet_steps))
        ),
    )
    # A resumed run draws new batches: the same seed would replay the first run's.
    rng = random.Random(args.seed + first_step - 1)
    generator = torch.Generator().manual_seed(args.seed + first_step - 1)
    for step in range(first_step, args.unet_steps + 1):
        index = torch.randint(len(latents), (args.batch_size,), generator=generator)
        clean = latents[index].to(args.device)
        captions = [training_caption(scenes[i], rng) for i in index.tolist()]
        ids = tokenizer(
            captions,
            padding='max_length',
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors='pt',
        ).input_ids.to(args.device)
        noise = torch.randn(clean.shape, generator=generator).to(args.device)
        timesteps = training_timesteps(len(clean), generator)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        velocity = noise_scheduler.get_velocity(clean, noise, timesteps)
        prediction = unet(noisy, timesteps.to(args.device), text_encoder(ids)[0]).sample
        weights = F.avg_pool2d(pixel_weights(masks[index]), LATENT_DOWNSAMPLING).to(args.device)
        loss = (weights * (prediction - velocity) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, model in ((ema_unet, unet), (ema_text, text_encoder)):
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 1 - decay)
        if step % 100 == 0:
            log('unet', step, loss.item())
        if step % args.checkpoint_every == 0 or step == args.unet_steps:
            yield step, ema_unet, ema_text


def save_pipeline(directory: Path, vae, unet, text_encoder, tokenizer):
    """Step 5: a diffusers directory: any Stable Diffusion loader reads it."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        # 'trailing': the first of few sampling steps is the last training step, pure noise.
        scheduler=DPMSolverMultistepScheduler(
            num_train_timesteps=1000, timestep_spacing='trailing', **NOISE_SCHEDULE
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)


def write_projection_only(args):
    """The preview projection of an already trained VAE, from the same first pictures."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(args.output_dir / 'vae').eval()
    pictures, _, _ = render_dataset(PROJECTION_PICTURES, args.seed)
    latents, _ = encode_dataset(vae, pictures, args.device)
    projection = fit_latent_projection(latents * vae.config.scaling_factor, pictures)
    (args.output_dir / PROJECTION_FILE).write_text(json.dumps(projection))


def command_line(args) -> str:
    """The command that repeats this run, every argument written out."""
    flags = [
        f'--{name.replace("_", "-")}' + ('' if value is True else f' {value}')
        for name, value in vars(args).items()
        if value is not False and value is not None
    ]
    return ' '.join(['python -m devtools.train_world_model', *flags])


def main():
    # Step 1: arguments.
    args = parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.projection_only:
        return write_projection_only(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    record_file = args.output_dir / 'training.json'
    record = json.loads(record_file.read_text()) if args.resume else {}
    commands = record.get('commands', []) + [command_line(args)]
    history = record.get('loss_history', [])
    started = time.monotonic() - 60 * record.get('minutes', 0)

    def log(stage, step, loss):
        minutes = (time.monotonic() - started) / 60
        history.append(
            {'stage': stage, 'step': step, 'loss': round(loss, 5), 'minutes': round(minutes, 2)}
        )
        print(f'{minutes:6.1f} min  {stage} step {step}  loss {loss:.4f}', flush=True)

    # Step 2: data: pictures of random scenes, rendered once; captions are drawn per step.
    pictures, masks, scenes = render_dataset(args.scenes, args.seed)
    tokenizer = build_world_tokenizer(args.output_dir / 'tokenizer')
    print(f'{len(scenes)} scenes rendered in {time.monotonic() - started:.0f} s', flush=True)

    # Step 3: the VAE (a resumed run keeps the checkpoint's), then every picture's latents.
    if args.resume or args.vae_from:
        from diffusers import AutoencoderKL

        saved = args.output_dir if args.resume else args.vae_from
        vae = saved_diffusers_model(AutoencoderKL, saved / 'vae').eval()
        latents, _ = encode_dataset(vae, pictures, args.device)
    else:
        vae = train_vae(pictures, masks, args, log)
        latents, scaling_factor = encode_dataset(vae, pictures, args.device)
        vae.register_to_config(scaling_factor=scaling_factor)
    latents = latents * vae.config.scaling_factor
    projection = fit_latent_projection(
        latents[:PROJECTION_PICTURES], pictures[:PROJECTION_PICTURES]
    )

    # Step 4 and 5: the UNet and text encoder; each checkpoint is saved whole, so a run cut short
    # still leaves a loadable model, and --resume goes on from it.
    if args.resume:
        denoiser, first_step = saved_denoiser(args.output_dir), record['unet_steps_done'] + 1
    else:
        denoiser, first_step = new_denoiser(tokenizer), 1
    checkpoints = train_unet(latents, masks, scenes, denoiser, first_step, tokenizer, args, log)
    for step, unet, text_encoder in checkpoints:
        save_pipeline(args.output_dir, vae, unet, text_encoder, tokenizer)
        (args.output_dir / PROJECTION_FILE).write_text(json.dumps(projection))
        minutes = (time.monotonic() - started) / 60
        record_file.write_text(
            json.dumps(
                {
                    'commands': commands,
                    'unet_steps_done': step,
                    'minutes': round(minutes, 1),
                    'torch_threads': torch.get_num_threads(),
                    'loss_history': history,
                },
                indent=1,
            )
        )
        print(f'saved step {step} to {args.output_dir} at {minutes:.1f} min', flush=True)


if __name__ == '__main__':
    main()
