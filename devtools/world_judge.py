"""Judge a picture of the offline model's world by its pixels.

``judge(image)`` says which place it shows, where its things are, their colour, how many there
are and which thing they are. Everything but the thing comes from pixel analysis using what the
world knows (devtools/world_render.py draws each place as fixed bands and each thing in one flat
colour): the foreground is what differs from the place's background, the colour is the nearest
world colour to its median, the count is its blobs, the position the anchor nearest its centroid.
Which thing it is comes from a tiny classifier of blob silhouettes trained on renders
(``python -m devtools.world_judge --train`` writes ``THING_CLASSIFIER``, about 100 KB).
"""

import argparse
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter

from devtools.world_render import BACKGROUNDS, background, render
from speech2image.world import ANCHORS, COLOURS, IMAGE_SIDE, PLACES, THINGS, random_scene

THING_CLASSIFIER = Path(__file__).resolve().parent.parent / 'weights' / 'world-judge.safetensors'
# A pixel this far (RGB distance) from the place's background belongs to a thing.
FOREGROUND_DISTANCE = 70.0
MIN_BLOB_PIXELS = 6
# Colour and place pairs closer than this are not judged (see ``visible``).
VISIBLE_DISTANCE = FOREGROUND_DISTANCE + 20
# Blobs smaller than this share of the largest one are specks, not things.
MIN_BLOB_SHARE = 0.25
SILHOUETTE_SIDE = 32


@dataclass
class Judgement:
    """What a picture shows, as the judge sees it; ``None`` where it found no thing."""

    place: str
    colour: Optional[str]
    thing: Optional[str]
    count: int
    position: Optional[str]
    centroid: Optional[Tuple[float, float]]  # (x, y) as fractions of the side
    foreground_mask: np.ndarray


def as_pixels(image) -> np.ndarray:
    """A PIL image, PNG bytes or array as float32 RGB at the world's side."""
    if isinstance(image, (bytes, bytearray)):
        import io

        image = Image.open(io.BytesIO(image))
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert('RGB')
    if image.size != (IMAGE_SIDE, IMAGE_SIDE):
        image = image.resize((IMAGE_SIDE, IMAGE_SIDE), Image.BILINEAR)
    return np.asarray(image, np.float32)


@lru_cache(maxsize=None)
def _background(place: str) -> np.ndarray:
    return background(place).astype(np.float32)


def nearest_place(pixels: np.ndarray) -> str:
    """The place whose empty picture is closest, by the median pixel distance (things cover
    less than half a picture, so the median sees the background)."""
    return min(
        PLACES,
        key=lambda p: float(np.median(np.linalg.norm(pixels - _background(p), axis=-1))),
    )


def blobs(mask: np.ndarray) -> List[np.ndarray]:
    """The 8-connected components of ``mask``, largest first, each as an array of (y, x)
    pixels; specks (and fragments such as a sun's rays) are dropped."""
    labels = np.zeros(mask.shape, np.int32)
    found = []
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        labels[start] = len(found) + 1
        stack, pixels = [start], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny in range(max(y - 1, 0), min(y + 2, mask.shape[0])):
                for nx in range(max(x - 1, 0), min(x + 2, mask.shape[1])):
                    if mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = len(found) + 1
                        stack.append((ny, nx))
        if len(pixels) >= MIN_BLOB_PIXELS:
            found.append(np.array(pixels))
    found.sort(key=len, reverse=True)
    return [b for b in found if len(b) >= MIN_BLOB_SHARE * len(found[0])]


def silhouette(pixels: np.ndarray) -> np.ndarray:
    """One blob's pixels as a float32 (SILHOUETTE_SIDE, SILHOUETTE_SIDE) mask, cropped to a
    square around it: the same for a thing of any size."""
    (y0, x0), (y1, x1) = pixels.min(0), pixels.max(0)
    half = max(y1 - y0, x1 - x0) / 2 + 1
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    crop = np.zeros((IMAGE_SIDE * 3, IMAGE_SIDE * 3), np.uint8)
    crop[pixels[:, 0] + IMAGE_SIDE, pixels[:, 1] + IMAGE_SIDE] = 255
    box = (
        cx - half + IMAGE_SIDE,
        cy - half + IMAGE_SIDE,
        cx + half + IMAGE_SIDE + 1,
        cy + half + IMAGE_SIDE + 1,
    )
    image = Image.fromarray(crop).resize(
        (SILHOUETTE_SIDE, SILHOUETTE_SIDE), Image.BILINEAR, box=box
    )
    return np.asarray(image, np.float32) / 255.0


def visible(colour: str, place: str) -> bool:
    """Whether a thing of ``colour`` stands out from every band of ``place`` clearly enough for
    the judge to find it (a white box on snow does not)."""
    bands = [np.array(c, np.float32) for band in BACKGROUNDS[place] for c in band[1:]]
    paint = np.array(COLOURS[colour], np.float32)
    return min(float(np.linalg.norm(paint - band)) for band in bands) > VISIBLE_DISTANCE


def foreground(pixels: np.ndarray, place: str) -> np.ndarray:
    return np.linalg.norm(pixels - _background(place), axis=-1) > FOREGROUND_DISTANCE


def judge(image, place: Optional[str] = None) -> Judgement:
    """Judge ``image`` (PIL image, PNG bytes or uint8 array); ``place`` skips finding it."""
    pixels = as_pixels(image)
    place = place or nearest_place(pixels)
    mask = foreground(pixels, place)
    found = blobs(mask)
    if not found:
        return Judgement(place, None, None, 0, None, None, mask)
    things = np.concatenate(found)
    kept = np.zeros_like(mask)
    kept[things[:, 0], things[:, 1]] = True
    median = np.median(pixels[kept], axis=0)
    colour = min(COLOURS, key=lambda c: float(np.linalg.norm(median - np.array(COLOURS[c]))))
    y, x = things.mean(0) / IMAGE_SIDE
    position = min(ANCHORS, key=lambda a: (ANCHORS[a][0] - x) ** 2 + (ANCHORS[a][1] - y) ** 2)
    thing = classify_thing(silhouette(found[0]))
    return Judgement(place, colour, thing, len(found), position, (float(x), float(y)), kept)


# The silhouette classifier.


def _classifier():
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(256, len(THINGS)),
    )


@lru_cache(maxsize=1)
def _trained_classifier():
    from safetensors.torch import load_file

    model = _classifier()
    model.load_state_dict(load_file(THING_CLASSIFIER))
    return model.eval()


def classify_thing(mask: np.ndarray) -> str:
    import torch

    with torch.no_grad():
        logits = _trained_classifier()(torch.from_numpy(mask)[None, None])
    return list(THINGS)[int(logits.argmax())]


def training_silhouettes(count: int, seed: int):
    """Silhouettes as the judge sees them in renders softened like a model's pictures (blur,
    noise), with their things' indices."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    masks, labels = [], []
    while len(masks) < count:
        scene = random_scene(rng)
        picture, _ = render(scene, rng)
        image = Image.fromarray(picture).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0)))
        pixels = np.asarray(image, np.float32) + noise.normal(0, rng.uniform(0, 12), picture.shape)
        found = blobs(foreground(pixels, scene.place))
        if found:
            masks.append(silhouette(found[0]))
            labels.append(list(THINGS).index(scene.thing))
    return np.stack(masks), np.array(labels)


def train_classifier(samples: int = 12_000, epochs: int = 12, seed: int = 0) -> float:
    """Train the silhouette classifier, save it to THING_CLASSIFIER; returns held-out accuracy."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    masks, labels = training_silhouettes(samples, seed)
    test_masks, test_labels = training_silhouettes(2_000, seed + 1)
    x, y = torch.from_numpy(masks)[:, None], torch.from_numpy(labels)
    model = _classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(128):
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(test_masks)[:, None]).argmax(1).numpy()
    THING_CLASSIFIER.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, THING_CLASSIFIER)
    _trained_classifier.cache_clear()
    return float((predicted == test_labels).mean())


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description="Train the judge's silhouette classifier.")
    parser.add_argument('--train', action='store_true', required=True)
    parser.parse_args()
    print(f'held-out accuracy on renders: {train_classifier():.3f}')
