"""convert_ct2_whisper_to_openai against CTranslate2's own writer: a small random openai-whisper
model is written as a CTranslate2 WhisperSpec (fused q/k/v, as CTranslate2's converter fuses them),
quantized by ctranslate2 and saved, then converted back; the weights must come back."""

import numpy as np
import pytest
import torch
from ctranslate2.specs import whisper_spec
from whisper.model import ModelDimensions, Whisper

from devtools.offline_models import convert_ct2_whisper_to_openai

DIMS = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=2,
    n_audio_layer=2,
    n_vocab=51864,
    n_text_ctx=448,
    n_text_state=64,
    n_text_head=2,
    n_text_layer=2,
)


def random_whisper() -> Whisper:
    torch.manual_seed(0)
    model = Whisper(DIMS)
    with torch.no_grad():  # layer norms are ones and zeros at init; make every weight distinct
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def ct2_spec(model: Whisper) -> whisper_spec.WhisperSpec:
    """The model as CTranslate2's WhisperSpec, filled the way its Transformers converter fills it."""
    # Copies: ctranslate2's int8 quantization scales the arrays it is given in place.
    weights = {name: value.numpy().copy() for name, value in model.state_dict().items()}
    spec = whisper_spec.WhisperSpec(
        DIMS.n_audio_layer, DIMS.n_audio_head, DIMS.n_text_layer, DIMS.n_text_head
    )

    def linear(layer, prefix):
        layer.weight = weights[f'{prefix}.weight']
        layer.bias = weights[f'{prefix}.bias']

    def fused(layer, prefix, names):
        layer.weight = np.concatenate([weights[f'{prefix}.{n}.weight'] for n in names])
        # Whisper's key has no bias; CTranslate2's converter fills zeros.
        layer.bias = np.concatenate(
            [
                weights.get(
                    f'{prefix}.{n}.bias', np.zeros(len(weights[f'{prefix}.{n}.weight']), np.float32)
                )
                for n in names
            ]
        )

    def norm(layer, prefix):
        layer.gamma = weights[f'{prefix}.weight']
        layer.beta = weights[f'{prefix}.bias']

    def block(layer, prefix, cross):
        fused(layer.self_attention.linear[0], f'{prefix}.attn', ('query', 'key', 'value'))
        linear(layer.self_attention.linear[1], f'{prefix}.attn.out')
        norm(layer.self_attention.layer_norm, f'{prefix}.attn_ln')
        if cross:
            linear(layer.attention.linear[0], f'{prefix}.cross_attn.query')
            fused(layer.attention.linear[1], f'{prefix}.cross_attn', ('key', 'value'))
            linear(layer.attention.linear[2], f'{prefix}.cross_attn.out')
            norm(layer.attention.layer_norm, f'{prefix}.cross_attn_ln')
        linear(layer.ffn.linear_0, f'{prefix}.mlp.0')
        linear(layer.ffn.linear_1, f'{prefix}.mlp.2')
        norm(layer.ffn.layer_norm, f'{prefix}.mlp_ln')

    linear(spec.encoder.conv1, 'encoder.conv1')
    linear(spec.encoder.conv2, 'encoder.conv2')
    spec.encoder.position_encodings.encodings = weights['encoder.positional_embedding']
    for i, layer in enumerate(spec.encoder.layer):
        block(layer, f'encoder.blocks.{i}', cross=False)
    norm(spec.encoder.layer_norm, 'encoder.ln_post')
    spec.decoder.embeddings.weight = weights['decoder.token_embedding.weight']
    spec.decoder.position_encodings.encodings = weights['decoder.positional_embedding']
    for i, layer in enumerate(spec.decoder.layer):
        block(layer, f'decoder.blocks.{i}', cross=True)
    norm(spec.decoder.layer_norm, 'decoder.ln')
    spec.decoder.projection.weight = weights['decoder.token_embedding.weight']
    spec.register_vocabulary([f'token{i}' for i in range(DIMS.n_vocab)])
    return spec


@pytest.mark.parametrize(
    'quantization, tolerance', [('float32', 0), ('float16', 1e-3), ('int8', 1 / 127)]
)
def test_conversion_gives_back_the_weights(tmp_path, quantization, tolerance):
    model = random_whisper()
    spec = ct2_spec(model)
    spec.validate()
    spec.optimize(quantization=quantization)
    (tmp_path / 'ct2').mkdir()
    spec.save(str(tmp_path / 'ct2'))

    checkpoint = convert_ct2_whisper_to_openai(tmp_path / 'ct2', tmp_path / 'model.pt')

    converted = torch.load(checkpoint)
    assert converted['dims'] == vars(DIMS)
    original = model.state_dict()
    assert converted['model_state_dict'].keys() == original.keys()
    for name, value in converted['model_state_dict'].items():
        assert value.dtype == torch.float32, name
        # int8 rounds each row to 1/127 of its largest magnitude: relative to that maximum.
        scale = original[name].abs().amax() if quantization == 'int8' else 1
        assert torch.allclose(value, original[name], rtol=tolerance, atol=tolerance * scale), name


def test_whisper_base_halves_that_do_not_join_into_the_released_model_are_refused(
    tmp_path, monkeypatch
):
    from devtools import offline_models

    halves = [tmp_path / 'model.bin.part1', tmp_path / 'model.bin.part2']
    for half in halves:
        half.write_bytes(b'not the model')
    monkeypatch.setattr(offline_models, 'whisper_base_parts', lambda: halves)
    with pytest.raises(ValueError, match='26 bytes with SHA-256 .*; expected 145217532 bytes'):
        offline_models.assemble_whisper_base(tmp_path / 'base')
    assert list((tmp_path / 'base').iterdir()) == []


def test_whisper_base_is_assembled_from_its_two_packages():
    from devtools import offline_models
    from devtools.offline_flow import MODELS

    model = MODELS / offline_models.WHISPER_BASE_DIR
    assert (model / 'model.bin').stat().st_size == offline_models.WHISPER_BASE_BYTES
    assert {path.name for path in model.iterdir()} == {
        'model.bin',
        *offline_models.WHISPER_BASE_FILES,
    }
