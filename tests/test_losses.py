"""Losses: perceptual (VGG weights handling, preprocessing), L1, adversarial stability."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import uniform_images
from dgf.errors import DgfError
from dgf.losses import (
    CHARBONNIER_EPS,
    FEATURE_SCALE,
    VGG16_NOTOP_FILE,
    VGG16_NOTOP_MD5,
    VGG16_NOTOP_URL,
    LossWeights,
    PerceptualLoss,
    VGGWeightsUnavailable,
    discriminator_loss,
    generator_adversarial_loss,
    generator_loss_terms,
    keras_cache_dir,
    l1_loss,
    ssim_loss,
    patch_probability,
    vgg_preprocess,
)


def _log_mean_sigmoid64(logits: np.ndarray) -> np.ndarray:
    return np.log(np.mean(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), axis=-1))


@pytest.fixture(scope="module")
def random_perceptual() -> PerceptualLoss:
    return PerceptualLoss(weights=None)


@pytest.fixture
def offline(monkeypatch):
    """No network at all: connections and name lookups fail at once."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# --- preprocessing and the perceptual loss -------------------------------------------


def test_vgg_preprocess_matches_keras_preprocess_input():
    images = uniform_images((2, 8, 8, 3))
    expected = keras.applications.vgg16.preprocess_input((images.astype(np.float64) + 1.0) * 127.5)
    got = np.asarray(vgg_preprocess(images))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_vgg_constants_match_what_keras_caches():
    from keras.src.applications import vgg16 as keras_vgg16

    assert keras_vgg16.WEIGHTS_PATH_NO_TOP == VGG16_NOTOP_URL
    assert VGG16_NOTOP_URL.endswith("/" + VGG16_NOTOP_FILE)
    source = Path(keras_vgg16.__file__).read_text()
    assert VGG16_NOTOP_MD5 in source


def test_perceptual_zero_for_identical_and_positive_otherwise(random_perceptual):
    sharp = uniform_images((2, 32, 40, 3), seed=1)
    same = random_perceptual(sharp, sharp)
    assert same.dtype == "float32"
    assert abs(float(same)) < 1e-6
    different = float(random_perceptual(sharp, uniform_images((2, 32, 40, 3), seed=2)))
    assert np.isfinite(different) and different > 0.0
    # Closer images are closer in feature space.
    near = float(random_perceptual(sharp, np.clip(sharp + 0.01, -1, 1)))
    assert 0.0 < near < different


def test_perceptual_is_truncated_frozen_and_float32_under_mixed_policy():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        loss = PerceptualLoss(weights=None, layer="block2_conv2")
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        value = loss(uniform_images((1, 16, 16, 3)), uniform_images((1, 16, 16, 3), seed=3))
    finally:
        keras.config.set_dtype_policy(previous)
    assert loss.features.layers[-1].name == "block2_conv2"
    assert loss.features.trainable_weights == []
    assert {layer.compute_dtype for layer in loss.features.layers} == {"float32"}
    assert value.dtype == "float32"


def test_perceptual_gradient_reaches_the_deblurred_image(random_perceptual):
    sharp = tf.constant(uniform_images((1, 16, 16, 3), seed=4))
    deblurred = tf.Variable(uniform_images((1, 16, 16, 3), seed=5))
    with tf.GradientTape() as tape:
        value = random_perceptual(sharp, deblurred)
    grad = tape.gradient(value, deblurred)
    assert grad is not None
    assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).max() > 0


def test_perceptual_does_not_backpropagate_through_the_target(random_perceptual):
    """The sharp image's VGG features are a constant target: no backward pass runs
    through VGG for them (that pass would cost as much as the deblurred one's)."""
    sharp = tf.Variable(uniform_images((2, 16, 16, 3), seed=4))
    deblurred = tf.Variable(uniform_images((2, 16, 16, 3), seed=5))
    with tf.GradientTape() as tape:
        value = random_perceptual(sharp, deblurred)
    grad_sharp, grad_deblurred = tape.gradient(value, [sharp, deblurred])
    assert grad_sharp is None and grad_deblurred is not None
    features = random_perceptual.features
    target = features(vgg_preprocess(sharp.numpy()), training=False)
    mine = features(vgg_preprocess(deblurred.numpy()), training=False)
    expected = np.mean(np.square(np.asarray(target) - np.asarray(mine))) * FEATURE_SCALE
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_unknown_layer_is_a_clear_error():
    with pytest.raises(DgfError, match=r"no layer 'block9_conv1'.*block3_conv3"):
        PerceptualLoss(weights=None, layer="block9_conv1")


def _write_notop_style_h5(model: keras.Model, path: Path) -> None:
    """Write weights in the layout of Keras' published notop file (layer_names groups)."""
    with h5py.File(path, "w") as f:
        names = [layer.name for layer in model.layers]
        f.attrs["layer_names"] = [name.encode() for name in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            weight_names = [f"{layer.name}_{kind}_1:0" for kind in ("W", "b")][: len(layer.weights)]
            group.attrs["weight_names"] = [n.encode() for n in weight_names]
            for name, weight in zip(weight_names, layer.weights):
                group.create_dataset(name, data=np.asarray(weight))


@pytest.mark.slow
def test_weights_load_from_local_notop_h5(tmp_path: Path):
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / VGG16_NOTOP_FILE
    _write_notop_style_h5(source, path)
    loss = PerceptualLoss(weights=path)
    expected = np.asarray(source.get_layer("block3_conv3").kernel)
    got = np.asarray(loss.features.get_layer("block3_conv3").kernel)
    np.testing.assert_array_equal(got, expected)
    # A second random VGG differs, so equality above means the file was loaded.
    assert not np.array_equal(
        np.asarray(PerceptualLoss(weights=None).features.get_layer("block3_conv3").kernel), expected
    )


def test_weights_load_from_keras_weights_h5(tmp_path: Path):
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    loss = PerceptualLoss(weights=str(path))
    np.testing.assert_array_equal(
        np.asarray(loss.features.get_layer("block1_conv1").bias),
        np.asarray(source.get_layer("block1_conv1").bias),
    )


def test_missing_weights_path_names_it(tmp_path: Path):
    missing = tmp_path / "nowhere" / VGG16_NOTOP_FILE
    with pytest.raises(DgfError, match="does not exist") as info:
        PerceptualLoss(weights=missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("name, content", [("broken.h5", b"not an hdf5 file"), ("vgg.bin", b"x")])
def test_unusable_weights_file_names_it(tmp_path: Path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DgfError, match=re.escape(VGG16_NOTOP_FILE)) as info:
        PerceptualLoss(weights=path)
    assert str(path) in str(info.value)


def test_wrong_hdf5_content_names_the_file(tmp_path: Path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.create_group("dense").attrs["weight_names"] = [b"kernel:0"]
        f["dense"].create_dataset("kernel:0", data=np.zeros((2, 2)))
    with pytest.raises(DgfError, match=re.escape(VGG16_NOTOP_FILE)) as info:
        PerceptualLoss(weights=path)
    assert str(path) in str(info.value)


def test_keras_cache_dir_follows_keras_home(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert keras_cache_dir() == tmp_path / "kh"
    assert (tmp_path / "kh").is_dir()


def test_offline_without_cached_weights_explains_the_fix(tmp_path: Path, monkeypatch, offline):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(VGGWeightsUnavailable, match=re.escape(VGG16_NOTOP_FILE)) as info:
        PerceptualLoss()
    assert isinstance(info.value, DgfError)
    message = str(info.value)
    for needle in (
        VGG16_NOTOP_FILE,
        VGG16_NOTOP_URL,
        str(tmp_path / "models" / VGG16_NOTOP_FILE),
        "--vgg-weights PATH",
        "--perceptual-weight 0",
    ):
        assert needle in message
    # No half-downloaded file is left where Keras would look next time.
    assert not (tmp_path / "models" / VGG16_NOTOP_FILE).exists()


# --- pixel and adversarial losses ----------------------------------------------------


def test_l1_loss_matches_numpy():
    a, b = uniform_images((2, 8, 8, 3), seed=6), uniform_images((2, 8, 8, 3), seed=7)
    np.testing.assert_allclose(float(l1_loss(a, b)), np.mean(np.abs(a - b)), rtol=1e-6)


def test_patch_probability_is_mean_sigmoid():
    logits = np.random.default_rng(8).normal(0, 3, (3, 16)).astype("float32")
    expected = np.mean(1 / (1 + np.exp(-logits.astype(np.float64))), axis=-1)
    got = np.asarray(patch_probability(logits))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("real_label", [1.0, 0.9])
def test_discriminator_loss_matches_float64_bce(real_label):
    rng = np.random.default_rng(9)
    real = rng.normal(1.0, 3.0, (4, 16)).astype("float32")
    fake = rng.normal(-1.0, 3.0, (4, 16)).astype("float32")
    d_real = np.exp(_log_mean_sigmoid64(real))
    d_fake = np.exp(_log_mean_sigmoid64(fake))
    expected = -np.mean(
        real_label * np.log(d_real) + (1 - real_label) * np.log(1 - d_real) + np.log(1 - d_fake)
    )
    got = float(discriminator_loss(real, fake, real_label=real_label))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_generator_adversarial_loss_matches_float64():
    fake = np.random.default_rng(10).normal(0.0, 4.0, (4, 16)).astype("float32")
    expected = -np.mean(_log_mean_sigmoid64(fake))
    np.testing.assert_allclose(float(generator_adversarial_loss(fake)), expected, rtol=1e-5)


@pytest.mark.parametrize("magnitude", [100.0, 1e4])
@pytest.mark.parametrize("real_sign, fake_sign", [(1, -1), (-1, 1), (1, 1), (-1, -1)])
def test_adversarial_losses_finite_at_saturation(magnitude, real_sign, fake_sign):
    real = tf.Variable(np.full((2, 16), real_sign * magnitude, dtype="float32"))
    fake = tf.Variable(np.full((2, 16), fake_sign * magnitude, dtype="float32"))
    with tf.GradientTape(persistent=True) as tape:
        d_loss = discriminator_loss(real, fake)
        g_adv = generator_adversarial_loss(fake)
    values = [float(d_loss), float(g_adv)]
    grads = [tape.gradient(d_loss, real), tape.gradient(d_loss, fake), tape.gradient(g_adv, fake)]
    assert np.all(np.isfinite(values))
    for grad in grads:
        assert grad is not None and np.all(np.isfinite(grad.numpy()))
    # Confidently wrong costs about the logit magnitude per wrong side; right costs ~0.
    wrong_sides = (real_sign < 0) + (fake_sign > 0)
    np.testing.assert_allclose(values[0], wrong_sides * magnitude, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(values[1], magnitude if fake_sign < 0 else 0.0, rtol=1e-3, atol=1e-3)


def test_saturated_generator_still_gets_a_gradient():
    # The point of -log D: a generator D rejects outright still learns.
    fake = tf.Variable(np.full((1, 4), -1e4, dtype="float32"))
    with tf.GradientTape() as tape:
        g_adv = generator_adversarial_loss(fake)
    grad = tape.gradient(g_adv, fake).numpy()
    np.testing.assert_allclose(grad, -0.25, rtol=1e-5)


def test_discriminator_loss_rejects_bad_label():
    with pytest.raises(ValueError, match="real_label"):
        discriminator_loss(np.zeros((1, 4)), np.zeros((1, 4)), real_label=0.0)


# --- combining the generator terms ---------------------------------------------------


class _SpyPerceptual:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, sharp, deblurred):
        self.calls += 1
        return tf.constant(0.5, dtype=tf.float32)


def test_generator_loss_terms_weighted_sum():
    sharp, deblurred = uniform_images((2, 8, 8, 3), seed=11), uniform_images((2, 8, 8, 3), seed=12)
    logits = np.random.default_rng(13).normal(0, 2, (2, 4)).astype("float32")
    spy = _SpyPerceptual()
    weights = LossWeights(perceptual=2.0, pixel=3.0, adversarial=5.0)
    terms = generator_loss_terms(sharp, deblurred, logits, spy, weights)
    assert spy.calls == 1
    assert set(terms) == {"g_perceptual", "g_pixel", "g_l1", "g_ssim", "g_adv", "g_loss"}
    assert float(terms["g_pixel"]) == float(terms["g_l1"])  # pixel_loss defaults to l1
    expected = 2.0 * 0.5 + 3.0 * float(l1_loss(sharp, deblurred)) + 5.0 * float(
        generator_adversarial_loss(logits)
    )
    np.testing.assert_allclose(float(terms["g_loss"]), expected, rtol=1e-6)


@pytest.mark.parametrize("use_spy, weight", [(True, 0.0), (False, 145.0)])
def test_perceptual_off_skips_vgg(use_spy, weight):
    sharp, deblurred = uniform_images((1, 8, 8, 3), seed=14), uniform_images((1, 8, 8, 3), seed=15)
    spy = _SpyPerceptual() if use_spy else None
    weights = LossWeights(perceptual=weight)
    terms = generator_loss_terms(sharp, deblurred, np.zeros((1, 4), "float32"), spy, weights)
    if spy is not None:
        assert spy.calls == 0
    assert float(terms["g_perceptual"]) == 0.0
    expected = 170.0 * float(terms["g_l1"]) + float(terms["g_adv"])
    np.testing.assert_allclose(float(terms["g_loss"]), expected, rtol=1e-6)


def test_default_weights_are_the_papers():
    assert LossWeights() == LossWeights(perceptual=145.0, pixel=170.0, adversarial=1.0)


@pytest.mark.parametrize("bad", [{"pixel": -1.0}, {"perceptual": float("nan")}])
def test_loss_weights_reject_bad_values(bad):
    name = next(iter(bad))
    with pytest.raises(DgfError, match=f"loss weight {name} must be a finite number >= 0"):
        LossWeights(**bad)


@pytest.mark.parametrize("name", ["l1", "l2", "charbonnier"])
def test_pixel_losses_match_their_definitions(name):
    sharp, deblurred = uniform_images((2, 8, 8, 3), seed=21), uniform_images((2, 8, 8, 3), seed=22)
    d = sharp.astype(np.float64) - deblurred.astype(np.float64)
    expected = {"l1": np.abs(d).mean(), "l2": (d**2).mean(),
                "charbonnier": np.sqrt(d**2 + CHARBONNIER_EPS**2).mean()}[name]
    weights = LossWeights(perceptual=0.0, pixel=2.0, adversarial=0.0, pixel_loss=name)
    terms = generator_loss_terms(sharp, deblurred, np.zeros((2, 4), "float32"), None, weights)
    np.testing.assert_allclose(float(terms["g_pixel"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(terms["g_l1"]), np.abs(d).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(terms["g_loss"]), 2.0 * expected, rtol=1e-5)


def test_content_only_terms_have_no_adversarial_part():
    sharp, deblurred = uniform_images((2, 8, 8, 3), seed=23), uniform_images((2, 8, 8, 3), seed=24)
    weights = LossWeights(perceptual=0.0, pixel=3.0, adversarial=5.0, pixel_loss="l2")
    terms = generator_loss_terms(sharp, deblurred, None, None, weights)
    assert float(terms["g_adv"]) == 0.0
    np.testing.assert_allclose(float(terms["g_loss"]), 3.0 * float(terms["g_pixel"]), rtol=1e-6)


def test_unknown_pixel_loss_is_refused():
    with pytest.raises(DgfError, match="pixel_loss must be one of"):
        LossWeights(pixel_loss="l3")


def test_ssim_loss_is_one_minus_the_reported_ssim():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(31)
    sharp = rng.uniform(-1, 1, (1, 24, 20, 3)).astype("float32")
    deblurred = np.clip(sharp + rng.normal(0, 0.3, sharp.shape), -1, 1).astype("float32")
    expected = structural_similarity(sharp[0], deblurred[0], channel_axis=-1, data_range=2.0)
    np.testing.assert_allclose(float(ssim_loss(sharp, deblurred)), 1.0 - expected, atol=1e-5)
    assert float(ssim_loss(sharp, sharp)) == pytest.approx(0.0, abs=1e-6)


def test_ssim_weight_adds_its_term():
    sharp = uniform_images((2, 16, 16, 3), seed=32)
    deblurred = uniform_images((2, 16, 16, 3), seed=33)
    weights = LossWeights(perceptual=0.0, pixel=1.0, adversarial=0.0, ssim=2.0)
    terms = generator_loss_terms(sharp, deblurred, None, None, weights)
    np.testing.assert_allclose(float(terms["g_ssim"]), float(ssim_loss(sharp, deblurred)))
    np.testing.assert_allclose(float(terms["g_loss"]),
                               float(terms["g_l1"]) + 2.0 * float(terms["g_ssim"]), rtol=1e-6)


def test_loss_weights_are_the_config_weights_and_the_pixel_losses_its_choices():
    from dgf.config import PIXEL_LOSSES, TrainConfig, settings
    from dgf.losses import PIXEL_LOSS_FUNCTIONS

    cfg = TrainConfig(perceptual_weight=1.5, pixel_weight=2.5, adversarial_weight=3.5,
                      ssim_weight=4.5, pixel_loss="charbonnier")
    assert LossWeights.from_config(cfg) == LossWeights(
        perceptual=1.5, pixel=2.5, adversarial=3.5, ssim=4.5, pixel_loss="charbonnier")
    # Every *_weight setting is a LossWeights field, and the other way round.
    assert {f"{name}_weight" for name in LossWeights.weight_names()} == {
        name for name in settings() if name.endswith("_weight")}
    assert tuple(PIXEL_LOSS_FUNCTIONS) == PIXEL_LOSSES == settings()["pixel_loss"].choices
    with pytest.raises(DgfError, match="ssim_weight must be >= 0, got -1"):
        TrainConfig(ssim_weight=-1.0)


# --- the loss table ------------------------------------------------------------------


def test_the_table_names_what_is_logged_and_summed():
    from dgf.config import settings
    from dgf.losses import GENERATOR_TERMS, TOTAL_LOSS, logged_names

    names = [term.name for term in GENERATOR_TERMS]
    assert names == ["g_perceptual", "g_l1", "g_pixel", "g_ssim", "g_adv"]
    assert logged_names() == (*names, TOTAL_LOSS) and TOTAL_LOSS == "g_loss"
    weighted = [term.weight for term in GENERATOR_TERMS if term.weight is not None]
    assert weighted == ["perceptual_weight", "pixel_weight", "ssim_weight", "adversarial_weight"]
    assert set(weighted) <= set(settings())
    assert LossWeights.weight_names() == ("perceptual", "pixel", "ssim", "adversarial")
    sharp, deblurred = uniform_images((1, 8, 8, 3), seed=41), uniform_images((1, 8, 8, 3), seed=42)
    for logits in (None, np.zeros((1, 4), "float32")):
        terms = generator_loss_terms(sharp, deblurred, logits, None, LossWeights())
        assert tuple(terms) == logged_names()
        assert all(value.dtype == "float32" for value in terms.values())


def test_g_loss_is_the_sum_of_weight_times_term(random_perceptual):
    from dgf.losses import GENERATOR_TERMS

    sharp = uniform_images((2, 16, 16, 3), seed=43)
    deblurred = uniform_images((2, 16, 16, 3), seed=44)
    logits = np.random.default_rng(45).normal(0, 2, (2, 4)).astype("float32")
    weights = LossWeights(perceptual=2.0, pixel=3.0, ssim=4.0, adversarial=5.0, pixel_loss="l2")
    terms = generator_loss_terms(sharp, deblurred, logits, random_perceptual, weights)
    terms = {key: float(value) for key, value in terms.items()}
    assert all(terms[name] > 0 for name in ("g_perceptual", "g_pixel", "g_ssim", "g_adv"))
    by_table = sum(weights.of(term) * terms[term.name] for term in GENERATOR_TERMS
                   if term.weight is not None)
    by_hand = (2.0 * terms["g_perceptual"] + 3.0 * terms["g_pixel"] + 4.0 * terms["g_ssim"]
               + 5.0 * terms["g_adv"])
    assert terms["g_loss"] == pytest.approx(by_table, rel=1e-6)
    assert by_table == pytest.approx(by_hand, rel=1e-12)
    d = sharp.astype(np.float64) - deblurred.astype(np.float64)
    assert terms["g_pixel"] == pytest.approx((d**2).mean(), rel=1e-5)  # l2, not the logged L1
    assert terms["g_l1"] == pytest.approx(np.abs(d).mean(), rel=1e-5)


_LOGGED_AS = {"perceptual": "g_perceptual", "pixel": "g_pixel", "ssim": "g_ssim",
              "adversarial": "g_adv"}


@pytest.mark.parametrize("name", list(_LOGGED_AS))
def test_a_zero_weight_keeps_its_term_out_of_the_sum(name, monkeypatch):
    """Weight 0: VGG16 and SSIM are not run and log 0; the pixel and adversarial terms
    are still computed and logged; none of them counts in g_loss."""
    import dgf.losses

    ssim_calls = []
    real_ssim = dgf.losses.ssim_loss
    monkeypatch.setattr(dgf.losses, "ssim_loss",
                        lambda a, b: ssim_calls.append(1) or real_ssim(a, b))
    sharp = uniform_images((1, 16, 16, 3), seed=46)
    deblurred = uniform_images((1, 16, 16, 3), seed=47)
    logits = np.random.default_rng(48).normal(0, 2, (1, 4)).astype("float32")
    spy = _SpyPerceptual()
    weights = {"perceptual": 2.0, "pixel": 3.0, "ssim": 4.0, "adversarial": 5.0}
    terms = generator_loss_terms(sharp, deblurred, logits, spy,
                                 LossWeights(**{**weights, name: 0.0}))
    terms = {key: float(value) for key, value in terms.items()}
    skipped = name in ("perceptual", "ssim")
    assert spy.calls == (0 if name == "perceptual" else 1)
    assert len(ssim_calls) == (0 if name == "ssim" else 1)
    assert (terms[_LOGGED_AS[name]] == 0.0) == skipped
    others = sum(w * terms[_LOGGED_AS[n]] for n, w in weights.items() if n != name)
    assert terms["g_loss"] == pytest.approx(others, rel=1e-6)


def test_loss_weights_know_only_the_tables_weights():
    weights = LossWeights(pixel=2.0, ssim=0.5)
    assert (weights.pixel, weights.ssim, weights.perceptual) == (2.0, 0.5, 145.0)
    assert weights == LossWeights(ssim=0.5, pixel=2.0) != LossWeights(pixel=2.0)
    assert hash(weights) == hash(LossWeights(ssim=0.5, pixel=2.0))
    assert repr(weights) == ("LossWeights(perceptual=145.0, pixel=2.0, ssim=0.5, "
                             "adversarial=1.0, pixel_loss='l1')")
    with pytest.raises(TypeError, match="no weight l2; the weighted terms are perceptual, "
                                        "pixel, ssim, adversarial"):
        LossWeights(l2=1.0)
    with pytest.raises(AttributeError, match="read-only"):
        weights.pixel = 3.0
    with pytest.raises(AttributeError, match="no attribute 'l2'"):
        weights.l2


def test_a_term_skipped_at_weight_zero_needs_a_weight():
    from dgf.losses import LossTerm, l2_loss

    with pytest.raises(ValueError, match="g_x: skip_at_zero needs a weight"):
        LossTerm("g_x", None, l2_loss, skip_at_zero=True)
    assert LossTerm("g_x", "x_weight", l2_loss).weight_name == "x"
    assert LossTerm("g_x", None, l2_loss).weight_name is None
