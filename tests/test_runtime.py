"""The inference runtime: BatchNorm folding, current weights, bf16 (dgf/runtime.py)."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import smooth_photo, smooth_photos
from dgf import runtime, tiling
from dgf.predictor import Predictor
from dgf.spec import InferenceSpec
from dgf.cli import deblur_main
from dgf.errors import DgfError
from dgf.images import to_unit
from dgf.models import build_generator

TOL = 1e-4


def _randomise_batchnorm(model, seed: int) -> None:
    """Give every BatchNorm non-trivial statistics, so folding them matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.1, c))
            layer.moving_mean.assign(rng.normal(0, 0.1, c))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))


@pytest.fixture(scope="module")
def trained_like():
    """A channel-rate-8 generator whose BatchNorms hold random statistics."""
    keras.utils.set_random_seed(5)
    model = build_generator(channel_rate=8)
    _randomise_batchnorm(model, 5)
    return model


def _unfused(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(runtime.compiled_generator(model)(x))


def _plain(model):
    """A predictor's call of ``model``: the folded copy on TensorFlow without XLA."""
    return Predictor(model, InferenceSpec(jit="off", engine="tensorflow")).call()


def _layer_types(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


# --- folding ------------------------------------------------------------------------
@pytest.mark.slow
def test_fold_matches_unfused_with_random_statistics(trained_like):
    x = to_unit(smooth_photos(2, 48, 64, seed=1))
    expected = _unfused(trained_like, x)
    # The statistics matter (a fold that ignored them would be far off) and the
    # output is not saturated by tanh (which would hide differences).
    fresh = build_generator(channel_rate=8)
    fresh.set_weights(trained_like.get_weights())
    for layer in fresh.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([np.ones(c), np.zeros(c), np.zeros(c), np.ones(c)])
    assert np.abs(_unfused(fresh, x) - expected).max() > 1e-2
    assert (np.abs(expected) < 0.95).mean() > 0.9

    folded = runtime.fold_batchnorm(trained_like)
    types = _layer_types(folded)
    assert "BatchNormalization" not in types and "Dropout" not in types
    assert types.count("Conv2D") == _layer_types(trained_like).count("Conv2D")
    got = np.asarray(runtime.compiled_generator(folded)(x))
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= TOL
    via_call = np.asarray(_plain(trained_like)(x))
    assert np.abs(via_call - expected).max() <= TOL


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_fold_matches_unfused_on_real_pairs(pairs_small, trained_like):
    files = sorted((pairs_small / "test").glob("*.jpg"))[:2]
    assert files, f"no test pairs in {pairs_small / 'test'}"
    blurred = []
    for path in files:
        with Image.open(path) as img:
            pair = np.asarray(img.convert("RGB"))
        blurred.append(pair[:, pair.shape[1] // 2 :])  # left sharp, right blurred
    x = to_unit(np.stack(blurred))
    expected = _unfused(trained_like, x)
    got = np.asarray(_plain(trained_like)(x))
    assert np.abs(got - expected).max() <= TOL


def test_fold_leaves_the_source_model_alone(trained_like):
    before = [w.copy() for w in trained_like.get_weights()]
    names = [layer.name for layer in trained_like.layers]
    folded = runtime.fold_batchnorm(trained_like)
    after = trained_like.get_weights()
    assert [layer.name for layer in trained_like.layers] == names
    assert "BatchNormalization" in _layer_types(trained_like)
    assert len(before) == len(after)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    # No shared variables: changing the copy leaves the source as it was.
    conv = folded.get_layer("head_conv")
    conv.set_weights([w + 1.0 for w in conv.get_weights()])
    assert all(np.array_equal(a, b) for a, b in zip(before, trained_like.get_weights()))


@pytest.mark.slow
def test_inference_call_follows_the_current_weights():
    """The trainer scores every epoch through one predictor: it must see new weights."""
    keras.utils.set_random_seed(11)
    model = build_generator(channel_rate=8)
    x = to_unit(smooth_photos(1, 32, 40, seed=2))
    run = Predictor(model, InferenceSpec(jit="off", engine="tensorflow"))
    call = run.call()
    first = np.asarray(call(x))
    _randomise_batchnorm(model, 12)  # as an epoch of training would change them
    model.get_layer("dense3_conv3x3").set_weights(
        [w * 1.5 for w in model.get_layer("dense3_conv3x3").get_weights()]
    )
    again = run.call()
    assert again is call  # same compiled graph: no retracing per epoch
    second = np.asarray(again(x))
    assert np.abs(second - first).max() > 1e-2
    assert np.abs(second - _unfused(model, x)).max() <= TOL


@keras.saving.register_keras_serializable(package="dgf_test")
class _Shift(keras.layers.Layer):
    """A custom layer with a weight: adds a learned per-channel offset."""

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        return x + self.offset


def test_fold_is_generic_and_only_folds_what_it_may():
    keras.utils.set_random_seed(4)
    layers = keras.layers
    inp = keras.Input((None, None, 3))
    a = layers.Conv2D(6, 3, padding="same", name="a")(inp)
    a_bn = layers.BatchNormalization(name="a_bn")(a)  # foldable
    b = layers.Conv2D(6, 1, use_bias=False, name="b")(a_bn)
    b_bn = layers.BatchNormalization(name="b_bn", center=False)(b)  # foldable, no bias
    c = layers.Conv2D(6, 3, padding="same", name="c")(b_bn)
    c_bn = layers.BatchNormalization(name="c_bn")(c)  # conv output also read below
    d = layers.Conv2D(6, 1, activation="relu", name="d")(c_bn)
    d_bn = layers.BatchNormalization(name="d_bn")(d)  # after an activation
    joined = layers.Concatenate(name="join")([d_bn, c])
    j_bn = layers.BatchNormalization(name="j_bn")(joined)  # after a concat
    act = layers.LeakyReLU(0.2, name="act")(j_bn)
    out = _Shift(name="shift")(layers.Conv2D(3, 3, padding="same", name="out")(act))
    model = keras.Model(inp, out)
    _randomise_batchnorm(model, 4)
    model.get_layer("shift").set_weights([np.array([0.1, -0.2, 0.3], np.float32)])

    folded = runtime.fold_batchnorm(model)
    kept = sorted(l.name for l in folded.layers if isinstance(l, layers.BatchNormalization))
    assert kept == ["c_bn", "d_bn", "j_bn"]
    assert folded.get_layer("a").use_bias and folded.get_layer("b").use_bias
    np.testing.assert_array_equal(folded.get_layer("shift").get_weights()[0],
                                  np.array([0.1, -0.2, 0.3], np.float32))
    x = to_unit(smooth_photos(2, 16, 20, seed=3))
    assert np.abs(_unfused(folded, x) - _unfused(model, x)).max() <= 1e-5


def test_fold_refuses_what_it_cannot_fold():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(DgfError, match="functional Keras model; got Sub"):
        runtime.fold_batchnorm(Sub())
    with pytest.raises(DgfError, match="unknown precision 'fp16'"):
        runtime.fold_batchnorm(build_generator(channel_rate=1), "fp16")


# --- bf16 ---------------------------------------------------------------------------
@pytest.mark.slow
def test_bf16_copy_computes_body_in_bfloat16_and_output_in_float32(trained_like):
    folded = runtime.fold_batchnorm(trained_like, "bf16")
    policies = {layer.name: layer.dtype_policy.name for layer in folded.layers}
    assert policies["deblurred"] == "float32"  # the last conv and what follows
    assert policies["head_conv"] == policies["dense5_conv1x1"] == "mixed_bfloat16"
    x = to_unit(smooth_photos(1, 40, 40, seed=6))
    expected = _unfused(trained_like, x)
    got = runtime.compiled_generator(folded)(x)
    assert got.dtype == "float32"
    diff = np.abs(np.asarray(got) - expected)
    assert 0 < diff.max() < 0.1  # bf16 rounding: visible, small
    assert diff.mean() < 0.01


def test_check_precision_messages(monkeypatch):
    with pytest.raises(DgfError, match="unknown precision 'fp8'; choose one of fp32, bf16, int8"):
        runtime.check_precision("fp8")
    runtime.check_precision("int8")  # an engine's precision: the engine checks it
    # A Keras copy computes in float only; int8 is an engine's quantised copy.
    with pytest.raises(DgfError, match="unknown precision 'int8' for a Keras copy; choose "
                                       "one of fp32, bf16"):
        runtime.inference_model(build_generator(channel_rate=4), "int8")
    monkeypatch.setattr(runtime, "_BF16_PROBE", ["NotFoundError: no bf16 kernel"])
    with pytest.raises(DgfError, match="bf16 is not supported on this machine.*no bf16 kernel"):
        runtime.check_precision("bf16")
    runtime.check_precision("fp32")


@pytest.mark.slow  # runs the whole command end to end
def test_deblur_cli_precision_bf16(tmp_path, model_file, capsys, monkeypatch):
    source = tmp_path / "in.png"
    image = smooth_photo(40, 56, seed=7)
    Image.fromarray(image).save(source)
    outputs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        status = deblur_main([str(source), "-o", str(out), "--model", str(model_file),
                              "--precision", precision, "--quiet"])
        err = capsys.readouterr().err
        if precision == "bf16" and runtime.bf16_unsupported_reason() is not None:
            assert status == 2 and "bf16 is not supported on this machine" in err
            return
        assert status == 0, err
        with Image.open(out / "in.png") as img:
            outputs[precision] = np.asarray(img).astype(int)
    diff = np.abs(outputs["bf16"] - outputs["fp32"])
    assert diff.max() <= 16 and diff.mean() < 2  # bf16 moves pixels a little

    monkeypatch.setattr(runtime, "_BF16_PROBE", ["NotFoundError: no bf16 kernel"])
    status = deblur_main([str(source), "-o", str(tmp_path / "x"), "--model",
                          str(model_file), "--precision", "bf16", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "error: --precision bf16 is not supported" in err
    assert not (tmp_path / "x").exists()


# --- counting -----------------------------------------------------------------------
def test_conv_flops_counts_every_convolution():
    # Head 3->32, ten blocks (1x1 C_i->32, 3x3 32->8), tail 1x1 8->32, 3x3 64->8,
    # 3x3 8->3, at 2 FLOPs per multiply-add, for channel rate 8 on 256x256.
    hw = 256 * 256
    c_in = [32 + 8 * i for i in range(10)]
    expected = 2 * hw * (
        9 * 3 * 32 + sum(c * 32 for c in c_in) + 10 * 9 * 32 * 8
        + 8 * 32 + 9 * 64 * 8 + 9 * 8 * 3
    )
    assert tiling.conv_flops(build_generator(channel_rate=8), 256, 256) == expected

