"""Does the offline model draw what the words say? Judged by pixels (devtools/world_judge.py).

    python -m bench.fidelity [--model models/shapes-world] [--prompts 240] [--grid docs/x.png]
                             [--seed 1234] [--guidance G]

Prompts name every attribute of a scene of the world (speech2image/world.py) in the world's plain
phrasing, with a fixed seed each; half ask for colour and thing pairs held out of training. The
judge reads colour, position, thing, count and place back from each picture. Paired checks keep
the seed and change one word: the colour (the thing's colour must follow), the place (the
background must follow) or left to right (the thing must move right). Every picture is drawn at
the service's defaults for the model (its card's steps and guidance, else the Executor's), or at
--guidance; the first prompts are drawn again at guidance 0 and 7.5, and a negative prompt naming
a colour is set against none on prompts that leave the colour unsaid. The same scenes rendered
and passed through the model's VAE give its ceiling: what the VAE alone keeps. Both are also
judged by the size of the things asked for (small things are a few latents wide).
"""

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from bench.report import machine_summary, markdown_table
from devtools.world_judge import judge, visible
from devtools.world_render import render
from executors.stablediffusion.executor import local_model_card, step_defaults
from speech2image.world import COLOURS, HELD_OUT, PLACES, SIZES, Scene, describe, random_scene

DEFAULT_MODEL = Path('models/shapes-world')
# The guidance scales the first GUIDANCE_PROMPTS prompts are drawn at besides the model's default:
# none at all (fidelity should drop without it) and Stable Diffusion's usual 7.5.
OTHER_GUIDANCE = (0.0, 7.5)
GUIDANCE_PROMPTS = 80
BATCH = 8
ATTRIBUTES = ('colour', 'position', 'thing', 'count', 'place')
GOALS = {'colour': 0.95, 'position': 0.90, 'thing': 0.80, 'count': 0.80}
PAIRS = 40
NEGATIVE_SEEDS = 60


@dataclass(frozen=True)
class Painter:
    """A loaded model that draws at the service's defaults for it."""

    pipeline: object
    steps: int
    guidance: float

    @classmethod
    def load(cls, model: Path, guidance: Optional[float] = None) -> 'Painter':
        """``model`` at its service defaults, or at ``guidance`` when given."""
        import torch
        from diffusers import AutoPipelineForText2Image

        pipeline = AutoPipelineForText2Image.from_pretrained(model, torch_dtype=torch.float32)
        pipeline.set_progress_bar_config(disable=True)
        defaults = step_defaults(str(model), pipeline, local_model_card(str(model)))
        if guidance is None:
            guidance = defaults['guidance_scale']
        return cls(pipeline, defaults['num_inference_steps'], guidance)

    def draw(
        self,
        prompts: List[str],
        seeds: List[int],
        guidance: Optional[float] = None,
        negative: Optional[str] = None,
    ):
        """One image per prompt, image i from ``seeds[i]``, at ``guidance`` (None: the model's
        default); PIL images."""
        import torch

        images = []
        for start in range(0, len(prompts), BATCH):
            batch = slice(start, start + BATCH)
            generators = [torch.Generator().manual_seed(s) for s in seeds[batch]]
            images += self.pipeline(
                prompts[batch],
                negative_prompt=None if negative is None else [negative] * len(prompts[batch]),
                num_inference_steps=self.steps,
                guidance_scale=self.guidance if guidance is None else guidance,
                generator=generators,
            ).images
        return images


def benchmark_scenes(count: int, seed: int) -> List[Scene]:
    """``count`` complete scenes the judge can see (colour visible on the place), half of them
    with a held-out colour and thing pair."""
    rng = random.Random(seed)
    held_out = sorted(HELD_OUT)
    scenes: List[Scene] = []
    while len(scenes) < count:
        scene = random_scene(rng)
        if len(scenes) % 2:
            colour, thing = rng.choice(held_out)
            scene = scene.with_(colour=colour, thing=thing)
        elif (scene.colour, scene.thing) in HELD_OUT:
            continue
        if visible(scene.colour, scene.place):
            scenes.append(scene)
    return scenes


def accuracy(
    scenes: List[Scene], images, keep: Callable[[Scene], bool] = lambda scene: True
) -> Dict[str, float]:
    """Share of the pictures of the scenes ``keep`` accepts (all by default) whose judged
    attribute equals the asked one."""
    kept = [(scene, judge(image)) for scene, image in zip(scenes, images) if keep(scene)]
    return {
        attribute: float(np.mean([getattr(j, attribute) == getattr(s, attribute) for s, j in kept]))
        for attribute in ATTRIBUTES
    }


def by_size(scenes: List[Scene], images, label: str) -> Dict[str, Dict[str, float]]:
    """``accuracy`` of the scenes of each size apart, as rows named '``label``, <size> things'."""
    return {
        f'{label}, {size} things': accuracy(scenes, images, lambda scene: scene.size == size)
        for size in SIZES
        if any(s.size == size for s in scenes)
    }


def vae_round_trips(painter: Painter, scenes: List[Scene], seed: int):
    """Renders of ``scenes`` passed through the model's VAE (encoded, decoded), as uint8 arrays:
    judged, what a perfect UNet could reach with this VAE."""
    import torch

    rng = random.Random(seed)
    renders = np.stack([render(scene, rng)[0] for scene in scenes])
    pictures = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 127.5 - 1
    vae = painter.pipeline.vae
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pictures).latent_dist.mean).sample
    return ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def paired_word(
    painter: Painter, scenes: List[Scene], changed: List[Scene], attribute: str
) -> float:
    """Same seed, each scene against its ``changed`` one (one attribute's words changed): share
    of pairs in which the judge reads both asked values of ``attribute``."""
    seeds = list(range(len(scenes)))
    first = painter.draw([describe(s) for s in scenes], seeds)
    second = painter.draw([describe(s) for s in changed], seeds)
    return float(
        np.mean(
            [
                getattr(judge(a), attribute) == getattr(s, attribute)
                and getattr(judge(b), attribute) == getattr(c, attribute)
                for a, b, s, c in zip(first, second, scenes, changed)
            ]
        )
    )


def paired_colour(painter: Painter, scenes: List[Scene], rng: random.Random) -> float:
    """Same seed, only the colour word changed: share of pairs whose judged colours are the two
    asked ones."""
    changed = [
        s.with_(colour=rng.choice([c for c in COLOURS if c != s.colour and visible(c, s.place)]))
        for s in scenes
    ]
    return paired_word(painter, scenes, changed, 'colour')


def paired_place(painter: Painter, scenes: List[Scene], rng: random.Random) -> float:
    """Same seed, only the place words changed: share of pairs whose judged places are the two
    asked ones (a model that takes the background from its starting noise fails it)."""
    others = {s: [p for p in PLACES if p != s.place and visible(s.colour, p)] for s in scenes}
    scenes = [s for s in scenes if others[s]]  # a colour seen on one place only has no pair
    changed = [s.with_(place=rng.choice(others[s])) for s in scenes]
    return paired_word(painter, scenes, changed, 'place')


def paired_side(painter: Painter, scenes: List[Scene]) -> float:
    """Same seed, only "left" changed to "right": share of pairs whose thing moved right by at
    least a fifth of the width."""
    left = [s.with_(position='left') for s in scenes]
    right = [s.with_(position='right') for s in scenes]
    seeds = list(range(len(scenes)))
    lefts = painter.draw([describe(s) for s in left], seeds)
    rights = painter.draw([describe(s) for s in right], seeds)
    moved = []
    for a, b in zip(lefts, rights):
        ja, jb = judge(a), judge(b)
        moved.append(bool(ja.centroid and jb.centroid and jb.centroid[0] - ja.centroid[0] > 0.2))
    return float(np.mean(moved))


def negative_prompt_effect(painter: Painter, colour: str = 'red') -> Dict[str, float]:
    """Prompts that leave the colour unsaid, with and without ``colour`` as the negative prompt:
    the share of pictures judged ``colour`` each way."""
    rng = random.Random(7)
    scenes = []
    while len(scenes) < NEGATIVE_SEEDS:
        scene = random_scene(rng)
        if visible(colour, scene.place):
            scenes.append(scene.with_(colour=None))
    prompts = [describe(s) for s in scenes]
    seeds = list(range(len(scenes)))
    shares = {}
    for label, negative in (('without', None), ('with', colour)):
        images = painter.draw(prompts, seeds, negative=negative)
        shares[label] = float(np.mean([judge(i).colour == colour for i in images]))
    return shares


def grid(images, path: Path, columns: int = 8, scale: int = 2):
    """The first pictures in a grid, each scaled up ``scale`` times (nearest neighbour)."""
    from PIL import Image

    side = images[0].width * scale
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new('RGB', (columns * side, rows * side), 'white')
    for i, image in enumerate(images):
        sheet.paste(
            image.resize((side, side), Image.NEAREST), ((i % columns) * side, (i // columns) * side)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', type=Path, default=DEFAULT_MODEL)
    parser.add_argument('--prompts', type=int, default=240)
    parser.add_argument('--seed', type=int, default=1234)
    parser.add_argument(
        '--guidance', type=float, help="draw at this guidance instead of the model's default"
    )
    parser.add_argument('--grid', type=Path, help='save a grid of the first 32 pictures here')
    parser.add_argument('--json', type=Path, help='write the figures here as JSON')
    args = parser.parse_args()

    painter = Painter.load(args.model, args.guidance)
    scenes = benchmark_scenes(args.prompts, args.seed)
    prompts = [describe(s) for s in scenes]
    seeds = [args.seed + i for i in range(len(scenes))]
    started = time.perf_counter()
    images = painter.draw(prompts, seeds)
    seconds_per_image = (time.perf_counter() - started) / len(images)
    figures = {
        'all': accuracy(scenes, images),
        'seen pairs': accuracy(scenes, images, lambda s: (s.colour, s.thing) not in HELD_OUT),
        'held-out pairs': accuracy(scenes, images, lambda s: (s.colour, s.thing) in HELD_OUT),
    }
    figures.update(by_size(scenes, images, 'drawn'))
    round_trips = vae_round_trips(painter, scenes, args.seed)
    figures['renders through the VAE'] = accuracy(scenes, round_trips)
    figures.update(by_size(scenes, round_trips, 'through the VAE'))
    first = slice(min(GUIDANCE_PROMPTS, len(scenes)))
    by_guidance = {painter.guidance: images[first]}  # already drawn above
    for guidance in OTHER_GUIDANCE:
        if guidance not in by_guidance:
            by_guidance[guidance] = painter.draw(prompts[first], seeds[first], guidance)
    for guidance, drawn in sorted(by_guidance.items()):
        figures[f'guidance {guidance:g} (first {first.stop})'] = accuracy(scenes[first], drawn)
    pair_scenes = [s.with_(count=1) for s in scenes[:PAIRS]]
    paired = {
        'colour word changed, same seed': paired_colour(
            painter, pair_scenes, random.Random(args.seed)
        ),
        'place words changed, same seed': paired_place(
            painter, pair_scenes, random.Random(args.seed)
        ),
        'left -> right, same seed': paired_side(painter, pair_scenes),
    }
    negative = negative_prompt_effect(painter)
    if args.grid:
        grid(images[:32], args.grid)
        args.grid.with_suffix('.txt').write_text('\n'.join(prompts[:32]) + '\n')

    print(machine_summary())
    whose = '' if args.guidance is not None else " (the model's default)"
    print(
        f'{args.model}: {len(images)} prompts, {painter.steps} steps, guidance '
        f'{painter.guidance:g}{whose}, '
        f'{seconds_per_image:.3f} s per image (batches of {BATCH})\n'
    )
    print(
        markdown_table(
            ['prompts'] + list(ATTRIBUTES),
            [[k] + [f'{v[a]:.1%}' for a in ATTRIBUTES] for k, v in figures.items()],
        )
    )
    print()
    print(markdown_table(['paired check', 'passed'], [[k, f'{v:.1%}'] for k, v in paired.items()]))
    print()
    print(
        f"negative prompt 'red' on {NEGATIVE_SEEDS} prompts with no colour: judged red "
        f'{negative["without"]:.1%} without it, {negative["with"]:.1%} with it'
    )
    print()
    goals = [
        [a, f'{g:.0%}', f'{figures["all"][a]:.1%}', 'met' if figures['all'][a] >= g else 'NOT met']
        for a, g in GOALS.items()
    ]
    print(markdown_table(['goal', 'target', 'measured', ''], goals))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    'accuracy': figures,
                    'paired': paired,
                    'negative_prompt': negative,
                    'seconds_per_image': seconds_per_image,
                },
                indent=1,
            )
        )


if __name__ == '__main__':
    main()
