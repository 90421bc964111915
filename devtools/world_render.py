"""Pictures of the offline model's world (speech2image/world.py), drawn with PIL.

``render(scene, rng)`` gives the RGB picture of a scene and the mask of its things: the training
data of devtools/train_world_model.py and the ground truth of the fidelity judge. Shapes are
drawn as masks at twice the size and scaled down, so edges are smooth; each thing is one flat
colour; each background is a fixed arrangement of bands, so a judge knows what it looks like.
"""

import math
import random
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from speech2image.world import ANCHORS, COLOURS, IMAGE_SIDE, RADII, Scene

SUPERSAMPLE = 2
# Backgrounds as horizontal bands: (fraction of the height where the band ends, top RGB,
# bottom RGB); colours are interpolated within a band.
BACKGROUNDS: Dict[str, List[Tuple[float, Tuple[int, int, int], Tuple[int, int, int]]]] = {
    'white wall': [(1.0, (236, 233, 226), (222, 219, 212))],
    'sky': [(1.0, (95, 160, 230), (180, 212, 245))],
    'night sky': [(1.0, (8, 12, 40), (32, 38, 88))],
    'sea': [(0.35, (165, 200, 238), (200, 222, 245)), (1.0, (30, 110, 160), (15, 60, 115))],
    'beach': [
        (0.3, (165, 200, 238), (200, 222, 245)),
        (0.45, (40, 125, 180), (40, 125, 180)),
        (1.0, (232, 208, 155), (218, 190, 135)),
    ],
    'grass': [(0.3, (165, 200, 238), (200, 222, 245)), (1.0, (95, 175, 70), (60, 130, 45))],
    'snow': [(0.3, (195, 205, 218), (215, 222, 232)), (1.0, (246, 248, 252), (228, 234, 242))],
    'desert': [(0.3, (150, 195, 240), (195, 220, 245)), (1.0, (228, 180, 105), (205, 150, 80))],
    'wooden table': [
        (0.25, (215, 205, 185), (205, 195, 175)),
        (1.0, (160, 105, 58), (135, 85, 45)),
    ],
}
PLANK_EVERY = 0.12  # the table's darker plank lines, as a fraction of the height
# Things of a group stand this many radii apart, centre to centre.
GROUP_SPACING = 2.6
JITTER = 0.03  # random shift of a scene's anchor, as a fraction of the side
SIZE_JITTER = 0.08


def background(place: str, side: int = IMAGE_SIDE) -> np.ndarray:
    """The place's picture with nothing in it: uint8 (side, side, 3)."""
    rows = np.zeros((side, 3), np.float32)
    start = 0.0
    for end, top, bottom in BACKGROUNDS[place]:
        for y in range(int(round(start * side)), int(round(end * side))):
            t = (y / side - start) / max(end - start, 1e-6)
            rows[y] = np.array(top) * (1 - t) + np.array(bottom) * t
        start = end
    if place == 'wooden table':
        table_top = int(BACKGROUNDS[place][0][0] * side)
        for y in range(table_top, side, max(1, int(PLANK_EVERY * side))):
            rows[y] *= 0.8
    return np.repeat(rows[:, None, :], side, axis=1).round().astype(np.uint8)


def _polygon(points, cx, cy, r):
    return [(cx + x * r, cy + y * r) for x, y in points]


def _ellipse(draw, cx, cy, rx, ry, fill=255):
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def _star_points(n=5, inner=0.45):
    return [
        (
            (1 if k % 2 == 0 else inner) * math.sin(math.pi * k / n),
            -(1 if k % 2 == 0 else inner) * math.cos(math.pi * k / n),
        )
        for k in range(2 * n)
    ]


def _ball(d, cx, cy, r):
    _ellipse(d, cx, cy, r, r)


def _box(d, cx, cy, r):
    d.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=255)


def _triangle(d, cx, cy, r):
    d.polygon(_polygon([(0, -1), (1, 0.8), (-1, 0.8)], cx, cy, r), fill=255)


def _star(d, cx, cy, r):
    d.polygon(_polygon(_star_points(), cx, cy + 0.1 * r, r), fill=255)


def _heart(d, cx, cy, r):
    _ellipse(d, cx - 0.45 * r, cy - 0.35 * r, 0.52 * r, 0.52 * r)
    _ellipse(d, cx + 0.45 * r, cy - 0.35 * r, 0.52 * r, 0.52 * r)
    d.polygon(_polygon([(-0.95, -0.2), (0.95, -0.2), (0, 0.95)], cx, cy, r), fill=255)


def _apple(d, cx, cy, r):
    _ellipse(d, cx - 0.3 * r, cy + 0.1 * r, 0.6 * r, 0.75 * r)
    _ellipse(d, cx + 0.3 * r, cy + 0.1 * r, 0.6 * r, 0.75 * r)
    d.rectangle([cx - 0.07 * r, cy - 1.0 * r, cx + 0.07 * r, cy - 0.5 * r], fill=255)
    d.polygon(_polygon([(0.05, -0.8), (0.6, -1.0), (0.25, -0.6)], cx, cy, r), fill=255)


def _sun(d, cx, cy, r):
    _ellipse(d, cx, cy, 0.55 * r, 0.55 * r)
    for k in range(8):
        a = math.pi * k / 4
        tip = (cx + r * math.cos(a), cy + r * math.sin(a))
        left = (cx + 0.45 * r * math.cos(a + 0.3), cy + 0.45 * r * math.sin(a + 0.3))
        right = (cx + 0.45 * r * math.cos(a - 0.3), cy + 0.45 * r * math.sin(a - 0.3))
        d.polygon([tip, left, right], fill=255)


def _moon(d, cx, cy, r):
    _ellipse(d, cx, cy, r, r)
    _ellipse(d, cx + 0.5 * r, cy - 0.2 * r, 0.8 * r, 0.8 * r, fill=0)


def _house(d, cx, cy, r):
    d.rectangle([cx - 0.7 * r, cy - 0.1 * r, cx + 0.7 * r, cy + 0.9 * r], fill=255)
    d.polygon(_polygon([(-1, -0.1), (1, -0.1), (0, -1)], cx, cy, r), fill=255)
    d.rectangle([cx - 0.15 * r, cy + 0.35 * r, cx + 0.15 * r, cy + 0.9 * r], fill=0)


def _tree(d, cx, cy, r):
    _ellipse(d, cx, cy - 0.35 * r, 0.65 * r, 0.65 * r)
    d.rectangle([cx - 0.15 * r, cy, cx + 0.15 * r, cy + r], fill=255)


def _boat(d, cx, cy, r):
    d.polygon(_polygon([(-1, 0.2), (1, 0.2), (0.65, 0.8), (-0.65, 0.8)], cx, cy, r), fill=255)
    d.polygon(_polygon([(0.05, -1), (0.05, 0.25), (0.75, 0.25)], cx, cy, r), fill=255)
    d.polygon(_polygon([(-0.05, -0.7), (-0.05, 0.25), (-0.6, 0.25)], cx, cy, r), fill=255)


def _fish(d, cx, cy, r):
    _ellipse(d, cx + 0.15 * r, cy, 0.75 * r, 0.45 * r)
    d.polygon(_polygon([(-0.5, 0), (-1, -0.5), (-1, 0.5)], cx, cy, r), fill=255)
    _ellipse(d, cx + 0.55 * r, cy - 0.1 * r, 0.1 * r, 0.1 * r, fill=0)


def _flower(d, cx, cy, r):
    d.rectangle([cx - 0.07 * r, cy, cx + 0.07 * r, cy + r], fill=255)
    for k in range(6):
        a = math.pi * k / 3
        _ellipse(
            d, cx + 0.4 * r * math.cos(a), cy - 0.3 * r + 0.4 * r * math.sin(a), 0.28 * r, 0.28 * r
        )
    _ellipse(d, cx, cy - 0.3 * r, 0.15 * r, 0.15 * r, fill=0)


def _car(d, cx, cy, r):
    d.rectangle([cx - r, cy - 0.1 * r, cx + r, cy + 0.4 * r], fill=255)
    d.polygon(
        _polygon([(-0.55, -0.1), (0.5, -0.1), (0.3, -0.55), (-0.35, -0.55)], cx, cy, r), fill=255
    )
    for x in (-0.55, 0.55):
        _ellipse(d, cx + x * r, cy + 0.5 * r, 0.25 * r, 0.25 * r)


def _lighthouse(d, cx, cy, r):
    d.polygon(_polygon([(-0.3, 1), (0.3, 1), (0.18, -0.5), (-0.18, -0.5)], cx, cy, r), fill=255)
    d.rectangle([cx - 0.26 * r, cy - 0.75 * r, cx + 0.26 * r, cy - 0.55 * r], fill=255)
    d.polygon(_polygon([(-0.3, -0.75), (0.3, -0.75), (0, -1)], cx, cy, r), fill=255)


def _cat(d, cx, cy, r):
    _ellipse(d, cx, cy + 0.35 * r, 0.6 * r, 0.6 * r)
    _ellipse(d, cx, cy - 0.45 * r, 0.4 * r, 0.38 * r)
    d.polygon(_polygon([(-0.38, -0.6), (-0.3, -1.0), (-0.08, -0.75)], cx, cy, r), fill=255)
    d.polygon(_polygon([(0.38, -0.6), (0.3, -1.0), (0.08, -0.75)], cx, cy, r), fill=255)
    d.line(
        _polygon([(0.4, 0.75), (0.95, 0.6), (0.95, 0.1)], cx, cy, r),
        fill=255,
        width=max(1, int(0.14 * r)),
    )


SHAPES: Dict[str, Callable] = {
    'ball': _ball,
    'box': _box,
    'triangle': _triangle,
    'star': _star,
    'heart': _heart,
    'apple': _apple,
    'sun': _sun,
    'moon': _moon,
    'house': _house,
    'tree': _tree,
    'boat': _boat,
    'fish': _fish,
    'flower': _flower,
    'car': _car,
    'lighthouse': _lighthouse,
    'cat': _cat,
}


def layout(scene: Scene, rng: random.Random, side: int = IMAGE_SIDE) -> Tuple[list, float]:
    """Centres (x, y) in pixels of the scene's things, and their radius. A group lies along the
    short axis of its place: in a row at the top, bottom or middle, in a column at the sides."""
    radius = RADII[scene.size] * side * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    radius *= (1.0, 0.85, 0.72)[scene.count - 1]
    ax, ay = ANCHORS[scene.position]
    ax += rng.uniform(-JITTER, JITTER)
    ay += rng.uniform(-JITTER, JITTER)
    column = scene.position in ('left', 'right')
    step = GROUP_SPACING * radius
    offsets = [(k - (scene.count - 1) / 2) * step for k in range(scene.count)]
    centres = [
        (ax * side, ay * side + o) if column else (ax * side + o, ay * side) for o in offsets
    ]
    # Keep the group inside the picture.
    margin = radius + 1
    xs, ys = [c[0] for c in centres], [c[1] for c in centres]
    dx = max(0, margin - min(xs)) - max(0, max(xs) - (side - margin))
    dy = max(0, margin - min(ys)) - max(0, max(ys) - (side - margin))
    return [(x + dx, y + dy) for x, y in centres], radius


def thing_mask(thing: str, centres, radius: float, side: int = IMAGE_SIDE) -> np.ndarray:
    """float32 (side, side) coverage in [0, 1] of ``thing`` drawn at each centre."""
    big = side * SUPERSAMPLE
    mask = Image.new('L', (big, big), 0)
    for cx, cy in centres:
        one = Image.new('L', (big, big), 0)
        SHAPES[thing](ImageDraw.Draw(one), cx * SUPERSAMPLE, cy * SUPERSAMPLE, radius * SUPERSAMPLE)
        mask = Image.fromarray(np.maximum(np.asarray(mask), np.asarray(one)))
    return np.asarray(mask.resize((side, side), Image.LANCZOS), np.float32) / 255.0


def render(
    scene: Scene, rng: random.Random, side: int = IMAGE_SIDE
) -> Tuple[np.ndarray, np.ndarray]:
    """The picture of a complete ``scene`` (uint8 (side, side, 3)) and its things' coverage."""
    centres, radius = layout(scene, rng, side)
    mask = np.clip(thing_mask(scene.thing, centres, radius, side), 0, 1)
    colour = np.array(COLOURS[scene.colour], np.float32)
    picture = background(scene.place, side).astype(np.float32)
    picture = picture * (1 - mask[..., None]) + colour * mask[..., None]
    return picture.round().astype(np.uint8), mask
