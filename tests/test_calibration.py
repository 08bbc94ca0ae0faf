"""XLA or not per host: the calibrated inference call and its cache (dgf/calibration.py,
dgf.predictor.Predictor)."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest import smooth_photos
from dgf import calibration, predictor, runtime
from dgf.errors import DgfError
from dgf.images import to_unit
from dgf.models import build_generator
from dgf.spec import InferenceSpec

TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(11)
    g = build_generator(channel_rate=8, blocks=3)
    rng = np.random.default_rng(11)
    for layer in g.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, c))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))
    return g


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder (each predictor holds its own decisions)."""
    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "calibration"


def _call(model, precision="fp32", jit="auto"):
    """A new predictor's call of ``model`` on TensorFlow (a new command's)."""
    spec = InferenceSpec(precision=precision, jit=jit, engine="tensorflow")
    return predictor.Predictor(model, spec).call()


def _entries(folder):
    return sorted(folder.glob("*")) if folder.exists() else []


def _x(seed=0, batch=2, size=32):
    return to_unit(smooth_photos(batch, size, size, seed=seed))


@pytest.mark.slow
def test_every_jit_setting_equals_the_model(model, cache):
    x = _x()
    expected = np.asarray(model(x, training=False))
    for jit in ("auto", "on", "off"):
        got = np.asarray(_call(model, "fp32", jit)(x))
        assert np.abs(got - expected).max() < TOL, jit
    # The output is not saturated or constant, so the comparison means something.
    assert expected.std() > 0.01


@pytest.mark.slow
def test_auto_calibrates_once_and_stores_the_choice(model, cache, capsys):
    x = _x(1)
    call = _call(model, "fp32", "auto")
    first = np.asarray(call(x))
    entries = _entries(cache)
    assert len(entries) == 1
    entry = json.loads(entries[0].read_text())
    assert entry["key"]["shape"] == [2, 32, 32, 3]
    assert entry["key"]["precision"] == "fp32"
    assert entry["choice"] in ("xla", "plain")
    assert entry["choice"] == min(entry["seconds"], key=entry["seconds"].get)
    assert call.choices[(2, 32, 32, 3)] == entry["choice"]
    assert "calibrated the fp32 call on 2x32x32x3" in capsys.readouterr().err
    # A new predictor (a new command) reads the entry instead of measuring again.
    def no_measuring(*args):
        raise AssertionError("measured again despite a valid cache entry")

    again = _call(model)
    again._measure = no_measuring
    np.testing.assert_allclose(np.asarray(again(x)), first, atol=TOL)
    assert again.choices[(2, 32, 32, 3)] == entry["choice"]
    # Another shape is another entry.
    del again._measure
    again(_x(2, batch=1, size=40))
    assert len(_entries(cache)) == 2


@pytest.mark.slow
def test_little_work_ahead_runs_the_first_path_unmeasured_and_stores_nothing(model, cache,
                                                                            capsys):
    """A caller that says it has fewer calls ahead than measuring spends
    (MEASURE_CALLS_PER_PATH per candidate) runs TensorFlow without XLA, says why, and
    leaves the choice unmade for a run with more work; a stored choice still wins."""
    x = _x(1)
    expected = np.asarray(model(x, training=False))
    spec = InferenceSpec(precision="fp32", jit="auto", engine="tensorflow")
    spend = predictor.MEASURE_CALLS_PER_PATH * 2  # two paths: plain and XLA
    little = predictor.Predictor(model, spec)
    call = little.call(calls_ahead=spend - 1)
    np.testing.assert_allclose(np.asarray(call(x)), expected, atol=TOL)
    assert call.choices[(2, 32, 32, 3)] == "plain" and _entries(cache) == []
    err = capsys.readouterr().err
    assert (f"inference runs on TensorFlow without XLA (oneDNN kernels) at fp32, not "
            f"measured: measuring the 2 paths costs about {spend} calls and this run has "
            f"{spend - 1} of 32x32") in err
    assert "calibrated" not in err
    # Enough work ahead: measured and stored, as with no hint at all.
    enough = predictor.Predictor(model, spec).call(calls_ahead=spend)
    np.testing.assert_allclose(np.asarray(enough(x)), expected, atol=TOL)
    assert len(_entries(cache)) == 1 and "calibrated the fp32 call" in capsys.readouterr().err
    entry = json.loads(_entries(cache)[0].read_text())
    # Stored: even a caller with one call ahead reads the measurement (the path whose
    # start-up plus one call is least), and measures nothing.
    again = predictor.Predictor(model, spec).call(calls_ahead=1)
    again(x)
    assert again.choices[(2, 32, 32, 3)] == calibration.best_for(entry, 1)
    err = capsys.readouterr().err
    assert "on this host earlier" in err and "calibrated" not in err


@pytest.mark.slow
def test_dgf_deblur_measures_for_a_folder_and_not_for_one_photo(model, cache, tmp_path,
                                                                 capsys):
    """One small photo (one call) would not repay measuring two paths: it runs
    unmeasured. A folder with as many calls as measuring spends is measured once and
    the choice stored."""
    from PIL import Image

    from dgf.infer import deblur_paths

    path = tmp_path / "g.keras"
    model.save(path)
    spec = InferenceSpec(precision="fp32", jit="auto", engine="tensorflow", tile=0)
    photos = tmp_path / "photos"
    photos.mkdir()
    count = predictor.MEASURE_CALLS_PER_PATH * 2  # one call each; two paths
    for i, image in enumerate(smooth_photos(count, 40, 48, seed=3)):
        Image.fromarray(image).save(photos / f"p{i}.png")
    report = deblur_paths(path, [photos / "p0.png"], tmp_path / "one", spec, progress=False)
    assert len(report.processed) == 1 and _entries(cache) == []
    assert "not measured: measuring the 2 paths costs about 8 calls and this run has 1 " \
           "of 40x48" in capsys.readouterr().err
    report = deblur_paths(path, [photos], tmp_path / "all", spec, progress=False)
    assert len(report.processed) == count and len(_entries(cache)) == 1
    err = capsys.readouterr().err
    assert err.count("calibrated the fp32 call on 1x40x48x3") == 1 and "not measured" not in err


def test_the_stored_path_for_few_calls_counts_each_paths_start_up():
    """XLA is faster per call but compiles in every new process: a run of a few calls
    takes the path whose start-up plus its calls is least; the stored choice (fastest
    per call) without a count or without start-up times."""
    entry = {"choice": "xla", "seconds": {"plain": 1.0, "xla": 0.8},
             "startup": {"plain": 0.5, "xla": 3.0}}
    assert calibration.best_for(entry, None) == "xla"
    assert calibration.best_for(entry, 4) == "plain"  # 0.5 + 4.0 < 3.0 + 3.2
    assert calibration.best_for(entry, 20) == "xla"  # 0.5 + 20 > 3.0 + 16
    assert calibration.best_for({k: entry[k] for k in ("choice", "seconds")}, 4) == "xla"


@pytest.mark.slow
def test_a_measurement_stores_each_paths_start_up_and_a_short_run_uses_it(model, cache,
                                                                          capsys):
    x = _x(8)
    spec = InferenceSpec(precision="fp32", jit="auto", engine="tensorflow")
    call = predictor.Predictor(model, spec).call()
    call(x)
    (path,) = _entries(cache)
    entry = json.loads(path.read_text())
    assert set(entry["startup"]) == {"plain", "xla"}
    assert all(seconds >= 0 for seconds in entry["startup"].values())
    # Rewritten so XLA is faster per call but starts slowly: one call takes plain.
    entry.update(choice="xla", seconds={"plain": 0.2, "xla": 0.1},
                 startup={"plain": 0.1, "xla": 5.0})
    path.write_text(json.dumps(entry))
    capsys.readouterr()
    short = predictor.Predictor(model, spec).call(calls_ahead=1)
    short(x)
    assert short.choices[(2, 32, 32, 3)] == "plain"
    assert ("with what each path costs a new process to start, the fastest for 1 call; "
            "TensorFlow with XLA is faster per call") in capsys.readouterr().err
    long = predictor.Predictor(model, spec).call(calls_ahead=100)
    long(x)
    assert long.choices[(2, 32, 32, 3)] == "xla"


def test_tile_calls_counts_the_calls_deblur_image_makes():
    from types import SimpleNamespace

    from dgf import tiling

    rng = np.random.default_rng(0)
    for height, width, tile, overlap, batch, align in (
            (100, 140, 0, 0, 1, 1), (60, 60, 64, 8, 1, 1), (150, 230, 64, 12, 1, 1),
            (150, 230, 64, 12, 3, 1), (150, 230, 64, 12, 2, 4), (97, 301, 96, 20, 1, 2),
            (1196, 1596, 864, 216, 1, 4)):
        calls = []

        def call(x):
            calls.append(x.shape)
            return x

        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        tiling._deblur_unit(call, image, tile, overlap, batch, False, align)
        assert tiling.tile_calls(height, width, tile, overlap, batch, align) == len(calls), \
            (height, width, tile, overlap, batch, align)
    # deblur_image hands the count of the photos left to the predictor's call.
    seen = []
    stand_in = SimpleNamespace(tiling=lambda: (64, 12), spec=SimpleNamespace(batch=1),
                               generator=None,
                               call=lambda calls_ahead=None: seen.append(calls_ahead) or (
                                   lambda x: x))
    image = rng.integers(0, 256, (150, 230, 3), dtype=np.uint8)
    tiling.deblur_image(stand_in, image, scale=0.5, images_ahead=3)
    tiling.deblur_image(stand_in, image)
    assert seen == [3 * tiling.tile_calls(75, 115, 64, 12), None]


def test_large_tiles_of_about_one_size_share_a_size_class():
    """Tiles shaped to each photo (dgf.tiling.tile_shape) differ a little from photo
    to photo; sides over 512 px are keyed by their multiple of 256 above, smaller
    inputs by their own shape."""
    assert calibration.shape_class((1, 1196, 576, 3)) == (1, 1280, 768, 3)
    assert calibration.shape_class((1, 1100, 640, 3)) == (1, 1280, 768, 3)
    assert calibration.shape_class((1, 1300, 640, 3)) == (1, 1536, 768, 3)
    assert calibration.shape_class((2, 32, 40, 3)) == (2, 32, 40, 3)
    assert calibration.shape_class((1, 512, 513, 3)) == (1, 512, 768, 3)


@pytest.mark.slow
def test_one_measurement_serves_its_size_class(model, cache):
    call = _call(model, "fp32", "auto")
    first = call(_x(4, batch=1, size=520))
    assert len(_entries(cache)) == 1

    def no_measuring(*args):
        raise AssertionError("measured again within one size class")

    call._measure = no_measuring
    out = np.asarray(call(_x(5, batch=1, size=600)))  # 520 and 600: both up to 768
    assert out.shape == (1, 600, 600, 3) and np.asarray(first).shape == (1, 520, 520, 3)
    again = _call(model, "fp32", "auto")  # a new command reads the entry
    again._measure = no_measuring
    again(_x(6, batch=1, size=700))
    assert len(_entries(cache)) == 1


@pytest.mark.parametrize("stored", ["xla", "plain"])
@pytest.mark.slow
def test_a_stored_choice_is_the_path_taken(model, cache, monkeypatch, stored):
    x = _x(3)
    call = _call(model, "fp32", "auto")
    calibration.write_entry(call._key(x.shape), {"xla": 1.0, "plain": 2.0}, stored)
    asked = []
    real = runtime.compiled_generator

    def spy(copy, jit_compile=False):
        asked.append(jit_compile)
        return real(copy, jit_compile)

    monkeypatch.setattr(runtime, "compiled_generator", spy)
    call(x)
    assert asked == [stored == "xla"]


# One kind of damage in make test-fast; the others (each compiles XLA twice) are slow.
@pytest.mark.parametrize("damage", [b"\x00garbage{",
                                    pytest.param(b'{"key": {}, "choice": "xla"}',
                                                 marks=pytest.mark.slow),
                                    pytest.param("choice", marks=pytest.mark.slow),
                                    pytest.param("seconds", marks=pytest.mark.slow),
                                    pytest.param("startup", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_a_damaged_entry_is_rebuilt_with_a_note(model, cache, capsys, damage):
    x = _x(4)
    call = _call(model, "fp32", "auto")
    call(x)
    (path,) = _entries(cache)
    if isinstance(damage, bytes):
        path.write_bytes(damage)
    else:
        entry = json.loads(path.read_text())
        entry[damage] = "fast" if damage == "choice" else {"xla": -1, "plain": 1}
        if damage == "startup":  # one negative start-up time
            entry[damage] = {"xla": 0.5, "plain": -0.1}
        path.write_text(json.dumps(entry))
    capsys.readouterr()
    out = np.asarray(_call(model)(x))
    err = capsys.readouterr().err
    assert f"calibration cache entry {path} is damaged" in err
    assert "calibrated the fp32 call" in err
    assert json.loads(path.read_text())["choice"] in ("xla", "plain")
    np.testing.assert_allclose(out, np.asarray(model(x, training=False)), atol=TOL)


@pytest.mark.slow
def test_an_interrupted_calibration_leaves_no_entry(model, cache, monkeypatch):
    x = _x(5)
    call = _call(model, "fp32", "auto")
    real = runtime.compiled_generator

    def interrupted(copy, jit_compile=False):
        fn = real(copy, jit_compile)
        if not jit_compile:
            return fn

        def ctrl_c(t):
            raise KeyboardInterrupt("Ctrl-C while XLA compiles")

        return ctrl_c

    monkeypatch.setattr(runtime, "compiled_generator", interrupted)
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C while XLA compiles"):
        call(x)
    assert _entries(cache) == []
    assert call.choices == {}


@pytest.mark.slow
def test_an_unwritable_cache_costs_only_a_note(model, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(calibration.CACHE_ENV, str(blocker))
    x = _x(6)
    out = np.asarray(_call(model, "fp32", "auto")(x))
    np.testing.assert_allclose(out, np.asarray(model(x, training=False)), atol=TOL)
    err = capsys.readouterr().err
    assert f"could not store the calibration in {blocker / 'calibration'}" in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_bf16_calibrates_its_own_entry(model, cache):
    x = _x(7)
    fp32 = np.asarray(_call(model, "fp32", "auto")(x))
    bf16 = np.asarray(_call(model, "bf16", "auto")(x))
    precisions = {json.loads(p.read_text())["key"]["precision"] for p in _entries(cache)}
    assert precisions == {"fp32", "bf16"}
    # bfloat16 keeps 8 bits of mantissa: close to fp32, but not equal to it.
    assert 0 < np.abs(bf16 - fp32).max() < 0.05
    for jit in ("on", "off"):
        other = np.asarray(_call(model, "bf16", jit)(x))
        assert np.abs(other - fp32).max() < 0.05


def test_unknown_jit_is_refused(model):
    with pytest.raises(DgfError, match="unknown jit setting 'fast'; choose one of auto, on, off"):
        InferenceSpec(jit="fast")


@pytest.mark.slow
def test_the_key_names_the_host_and_the_layout(tmp_path, model):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: sse2 avx2 fma\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: sse2 avx2 fma\n")
    cpu = calibration.cpu_description(info)
    assert cpu["model"] == "Test CPU 9000" and cpu["flags"] == ["avx2", "fma", "sse2"]
    assert calibration.cpu_description(tmp_path / "missing")["flags"] == []
    # The layout ignores layer names (numbered per session) and weights, not shapes.
    keras.utils.set_random_seed(1)
    twin = build_generator(channel_rate=8, blocks=3)
    other = build_generator(channel_rate=16, blocks=3)
    conv = {"name": "conv_1", "filters": 8, "kernel_size": [3, 3]}
    assert calibration.layout_key([("Conv2D", conv)]) == calibration.layout_key(
        [("Conv2D", {**conv, "name": "conv_7"})])
    assert calibration.layout_key([("Conv2D", conv)]) != calibration.layout_key(
        [("Conv2D", {**conv, "filters": 16})])
    assert predictor.model_layout(twin) == predictor.model_layout(model)
    assert predictor.model_layout(other) != predictor.model_layout(model)
    host = calibration.host_key("2.x", [])
    a = calibration.entry_path(calibration.entry_key(host, "L", "fp32", (1, 8, 8, 3)))
    b = calibration.entry_path(calibration.entry_key(host, "L", "fp32", (1, 8, 9, 3)))
    c = calibration.entry_path(calibration.entry_key({**host, "tensorflow": "3"}, "L",
                                                     "fp32", (1, 8, 8, 3)))
    assert len({a, b, c}) == 3


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(calibration.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert calibration.cache_dir() == tmp_path / "xdg" / "dgf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert calibration.cache_dir() == tmp_path / "home" / ".cache" / "dgf"
    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path / "mine"))
    assert calibration.cache_dir() == tmp_path / "mine"


# --- --precision auto ---------------------------------------------------------------
@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),
    ({"avx2", "amx_bf16", "amx_tile"}, "bf16"),
    ({"avx2", "fma"}, "fp32"),
    ({"asimd", "bf16"}, "fp32"),  # Arm's bf16 is not measured: fp32
])
def test_precision_auto_follows_the_cpu(monkeypatch, flags, expected):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(flags))
    assert runtime.resolve_precision("auto") == expected
    assert runtime.resolve_precision("fp32") == "fp32"
    assert runtime.resolve_precision("bf16") == "bf16"


def test_precision_auto_is_fp32_with_a_gpu_or_without_bf16_kernels(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(runtime.tf.config, "list_physical_devices",
                        lambda kind=None: ["gpu"] if kind == "GPU" else [])
    assert runtime.resolve_precision("auto") == "fp32"
    monkeypatch.undo()
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(runtime, "_BF16_PROBE", ["InvalidArgumentError: no kernel"])
    assert runtime.resolve_precision("auto") == "fp32"
    with pytest.raises(DgfError, match="unknown precision 'fp8'"):
        runtime.resolve_precision("fp8")


@pytest.mark.slow  # the quick subset keeps a cheaper test of this module
def test_deblur_paths_says_what_precision_auto_chose(model_file, tmp_path, monkeypatch,
                                                     capsys):
    from conftest import smooth_photo
    from PIL import Image

    from dgf.infer import deblur_paths

    photo = tmp_path / "in.png"
    Image.fromarray(smooth_photo(40, 48, seed=2)).save(photo)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    # One path (TensorFlow without XLA) for both: the precision is what is compared, and
    # auto would calibrate (and compile XLA's bf16 graph) per run.
    fixed = dict(jit="off", engine="tensorflow", scale=1)
    auto = deblur_paths(model_file, [photo], tmp_path / "auto",
                        InferenceSpec(precision="auto", **fixed), progress=False)
    assert "--precision auto: bf16 (this CPU computes bfloat16 natively)" in \
        capsys.readouterr().out
    bf16 = deblur_paths(model_file, [photo], tmp_path / "bf16",
                        InferenceSpec(precision="bf16", **fixed), progress=False)
    a = np.asarray(Image.open(auto.processed[0]))
    b = np.asarray(Image.open(bf16.processed[0]))
    np.testing.assert_array_equal(a, b)
