"""The training recipe of the offline model (devtools/train_world_model.py), run for a few steps:
it saves a directory every Stable Diffusion loader reads, and ``--resume`` goes on from it."""

import json
import subprocess
import sys

import numpy as np
import torch

from devtools.offline_flow import ROOT

# A few pictures and steps: the recipe's every stage, in seconds.
TINY_RUN = [
    '--scenes', '32', '--vae-steps', '2', '--vae-batch-size', '4', '--batch-size', '4',
    '--checkpoint-every', '1', '--threads', '1',
]  # fmt: skip


def train(output_dir, *flags: str) -> None:
    subprocess.run(
        [sys.executable, '-m', 'devtools.train_world_model', '--output-dir', str(output_dir)]
        + TINY_RUN
        + list(flags),
        cwd=ROOT,
        check=True,
        timeout=300,
    )


def test_a_run_resumed_goes_on_from_its_checkpoint_and_loads_like_any_checkpoint(tmp_path):
    from diffusers import AutoPipelineForText2Image, UNet2DConditionModel

    model = tmp_path / 'model'
    train(model, '--unet-steps', '2')
    vae_before = (model / 'vae' / 'diffusion_pytorch_model.safetensors').read_bytes()
    unet_before = UNet2DConditionModel.from_pretrained(model / 'unet').state_dict()

    train(model, '--unet-steps', '3', '--resume')

    record = json.loads((model / 'training.json').read_text())
    assert record['unet_steps_done'] == 3
    assert len(record['commands']) == 2 and record['commands'][1].endswith(' --resume')
    # The VAE is kept as it was; the UNet went on from the saved weights, one step further.
    assert (model / 'vae' / 'diffusion_pytorch_model.safetensors').read_bytes() == vae_before
    unet_after = UNet2DConditionModel.from_pretrained(model / 'unet').state_dict()
    changes = [
        (unet_after[name] - weight).abs().max().item() for name, weight in unet_before.items()
    ]
    assert 0 < max(changes) < 0.1, max(changes)
    # The saved configs do not name the machine's directories.
    assert str(tmp_path) not in ''.join(path.read_text() for path in model.glob('*/*.json'))

    pipeline = AutoPipelineForText2Image.from_pretrained(model)
    image = pipeline(
        'a red ball', num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64) and np.asarray(image).std() > 0
