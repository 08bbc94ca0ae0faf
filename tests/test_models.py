"""The DGF networks: golden sizes, shapes, tiling, serialization, mixed precision."""
from __future__ import annotations

import copy
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import uniform_images
from dgf.errors import DgfError
from dgf.models import (
    PatchTiles,
    build_discriminator,
    ResidualOutput,
    build_generator,
    check_discriminator_size,
    count_params,
    is_residual,
)


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


@pytest.fixture(autouse=True)
def seeded():
    """Every test here starts from one random state: the weights a builder draws and
    the dropout masks of ``training=True`` calls are the same on every run."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def test_generator_golden_parameter_count():
    assert count_params(build_generator()) == (3_197_827, 6_912)


def test_blocks_set_the_dense_field_with_the_papers_dilations_at_ten():
    from dgf.models import DENSE_DILATIONS, dense_dilations, generator_layout

    assert dense_dilations(10) == DENSE_DILATIONS == (1, 1, 1, 2, 1, 3, 1, 2, 1, 1)
    assert dense_dilations(1) == (1,) and dense_dilations(3) == (1, 1, 1)
    assert dense_dilations(6) == (1, 1, 1, 2, 1, 1)
    assert dense_dilations(16) == (1, 1, 1, 2, 1, 3, 1, 4, 1, 4, 1, 3, 1, 2, 1, 1)
    cr = 8
    three, ten = build_generator(channel_rate=cr, blocks=3), build_generator(channel_rate=cr)
    convs = [layer for layer in three.layers
             if layer.name.startswith("dense") and layer.name.endswith("_conv3x3")]
    assert [layer.dilation_rate for layer in convs] == [(1, 1)] * 3
    assert generator_layout(three)["blocks"] == 3 and generator_layout(ten)["blocks"] == 10

    def block(i: int) -> int:  # block i reads the head's 4cr maps and cr from each before
        return ((4 + i - 1) * cr * 4 * cr + 4 * cr + 2 * 4 * cr  # 1x1 conv, its BatchNorm
                + 9 * 4 * cr * cr + cr + 2 * cr)  # 3x3 conv, its BatchNorm

    assert count_params(ten)[0] - count_params(three)[0] == sum(block(i) for i in range(4, 11))
    x = uniform_images((1, 24, 40, 3))
    assert tuple(three(x).shape) == (1, 24, 40, 3)


def test_residual_and_batchnorm_options_keep_the_counts_they_should():
    # The residual head is the same 3x3 conv; dropping BatchNorm removes its 2 * 3456
    # scales/offsets and its 6,912 moving statistics at cr 64.
    assert count_params(build_generator(residual=True)) == (3_197_827, 6_912)
    assert count_params(build_generator(batchnorm=False)) == (3_197_827 - 6_912, 0)


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.slow
def test_fresh_residual_generator_is_the_identity(batchnorm):
    generator = build_generator(channel_rate=8, residual=True, batchnorm=batchnorm)
    assert is_residual(generator) and not is_residual(build_generator(channel_rate=8))
    x = uniform_images((2, 24, 40, 3), seed=5)
    np.testing.assert_array_equal(np.asarray(generator(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(generator(x, training=True)), x)


def test_residual_output_adds_and_clips():
    blurred = np.array([[[[0.5, -0.9, 0.0]]]], "float32")
    correction = np.array([[[[0.7, -0.3, 0.25]]]], "float32")
    out = np.asarray(ResidualOutput()([blurred, correction]))
    np.testing.assert_allclose(out, [[[[1.0, -1.0, 0.25]]]])


@pytest.mark.slow
def test_trained_residual_generator_departs_from_the_identity():
    generator = build_generator(channel_rate=8, residual=True)
    last = generator.get_layer("residual")
    last.kernel.assign(np.full(last.kernel.shape, 0.01, "float32"))
    x = uniform_images((1, 16, 16, 3), seed=6)
    assert np.abs(np.asarray(generator(x, training=False)) - x).max() > 1e-3


def test_discriminator_golden_parameter_count():
    assert count_params(build_discriminator()) == (966_401, 1_408)


@pytest.mark.slow
def test_generator_keeps_non_square_size_and_range():
    generator = build_generator(channel_rate=8)
    out = np.asarray(generator(uniform_images((2, 40, 72, 3)), training=True))
    assert out.shape == (2, 40, 72, 3)
    assert out.dtype == np.float32
    assert np.all(np.abs(out) <= 1.0)


def test_generator_layers_follow_the_dgf_design():
    generator = build_generator(channel_rate=8)
    dilations = [generator.get_layer(f"dense{k}_conv3x3").dilation_rate[0] for k in range(1, 11)]
    assert dilations == [1, 1, 1, 2, 1, 3, 1, 2, 1, 1]
    # Dense connectivity: block k sees the head's 32 maps plus 8 per earlier block.
    for k in range(1, 11):
        assert generator.get_layer(f"dense{k}_conv1x1").input.shape[-1] == 32 + 8 * (k - 1)
    assert generator.get_layer("global_skip").output.shape[-1] == 64


def test_discriminator_logits_per_patch_for_non_square_image():
    discriminator = build_discriminator(channel_rate=8, patch=64)
    logits = np.asarray(discriminator(uniform_images((2, 128, 256, 3)), training=False))
    assert logits.shape == (2, 8)
    assert logits.dtype == np.float32


def test_discriminator_rows_belong_to_their_images():
    discriminator = build_discriminator(channel_rate=8, patch=32)
    batch = uniform_images((3, 64, 96, 3), seed=1)
    together = np.asarray(discriminator(batch, training=False))
    alone = np.concatenate(
        [np.asarray(discriminator(batch[i : i + 1], training=False)) for i in range(3)]
    )
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
    # Distinct images must give distinct scores, or the test above proves nothing.
    assert not np.allclose(together[0], together[1])


def test_patch_tiles_are_row_major_within_each_image():
    images = np.arange(2 * 128 * 192 * 3, dtype="float32").reshape(2, 128, 192, 3)
    tiles = np.asarray(PatchTiles(64)(images))
    assert tiles.shape == (12, 64, 64, 3)
    expected = [
        images[b, r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64]
        for b in range(2)
        for r in range(2)
        for c in range(3)
    ]
    np.testing.assert_array_equal(tiles, np.stack(expected))


def test_discriminator_rejects_size_that_does_not_tile():
    discriminator = build_discriminator(channel_rate=8, patch=64)
    with pytest.raises(ValueError, match=r"100x100.*patch size 64"):
        discriminator(uniform_images((1, 100, 100, 3)))


def test_discriminator_rejects_static_input_shape_that_does_not_tile():
    with pytest.raises(ValueError, match=r"96x96.*patch size 64"):
        PatchTiles(64).compute_output_shape((None, 96, 96, 3))


@pytest.mark.parametrize("height, width", [(100, 100), (128, 96), (32, 64)])
def test_check_discriminator_size_rejects(height, width):
    with pytest.raises(DgfError, match=rf"{height}x{width}.*patch size 64"):
        check_discriminator_size(height, width, 64)


def test_check_discriminator_size_accepts_multiples():
    check_discriminator_size(128, 256, 64)
    check_discriminator_size(64, 64, 64)


@pytest.mark.parametrize("builder", [build_generator, build_discriminator])
def test_no_lambda_layers(builder):
    model = builder(channel_rate=8)
    layers = _all_layers(model)
    assert len(layers) > 10
    assert not [layer.name for layer in layers if isinstance(layer, keras.layers.Lambda)]


@pytest.mark.parametrize(
    "builder, shape",
    [
        (lambda: build_generator(channel_rate=8), (2, 32, 48, 3)),
        (lambda: build_generator(channel_rate=8, residual=True, batchnorm=False), (2, 32, 48, 3)),
        (lambda: build_discriminator(channel_rate=8, patch=32), (2, 64, 32, 3)),
    ],
)
@pytest.mark.slow
def test_keras_file_round_trip_in_safe_mode(tmp_path: Path, builder, shape):
    model = builder()
    x = uniform_images(shape, seed=2)
    # A training step's worth of BN statistics, so loading must restore non-trainables.
    for w in model.non_trainable_weights:
        w.assign(np.random.default_rng(3).uniform(0.5, 1.5, w.shape).astype("float32"))
    if "residual" in [layer.name for layer in model.layers]:  # a non-identity correction
        kernel = model.get_layer("residual").kernel
        kernel.assign(np.random.default_rng(4).normal(0, 0.05, kernel.shape).astype("float32"))
    expected = np.asarray(model(x, training=False))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True is Keras' default
    assert loaded.name == model.name
    assert count_params(loaded) == count_params(model)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "builder, shape",
    [
        (lambda: build_generator(channel_rate=8), (1, 32, 32, 3)),
        (lambda: build_discriminator(channel_rate=8, patch=32), (1, 64, 64, 3)),
    ],
)
@pytest.mark.slow
def test_config_round_trip(builder, shape):
    model = builder()
    config = model.get_config()
    # from_config consumes the dict it is given.
    clone = keras.Model.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    x = uniform_images(shape, seed=4)
    np.testing.assert_allclose(
        np.asarray(clone(x, training=False)), np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_models_run_under_mixed_bfloat16(mixed_bfloat16):
    generator = build_generator(channel_rate=8)
    discriminator = build_discriminator(channel_rate=8, patch=32)
    assert generator.get_layer("dense1_conv3x3").compute_dtype == "bfloat16"
    deblurred = generator(uniform_images((2, 64, 64, 3)), training=True)
    logits = discriminator(deblurred, training=True)
    assert deblurred.dtype == "float32"
    assert logits.dtype == "float32"
    assert tuple(logits.shape) == (2, 4)
    assert np.all(np.isfinite(np.asarray(logits)))
    bn = generator.get_layer("dense1_bn1")
    assert {w.dtype for w in bn.weights} == {"float32"}


@pytest.mark.parametrize("bad, message", [
    ({"channel_rate": 0}, "channel_rate must be a positive integer, got 0"),
    ({"blocks": 0}, "blocks must be a positive integer, got 0"),
    ({"blocks": 2.5}, "blocks must be a positive integer, got 2.5"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1\.0"),
    ({"dropout": -0.1}, r"dropout must be in \[0, 1\), got -0\.1"),
])
def test_generator_rejects_bad_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        build_generator(**bad)
