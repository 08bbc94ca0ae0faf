"""The same command on 1 or N devices: ``--batch-size auto`` (1 per replica, the
default), the refusal of a global batch that does not split over the replicas, the
batch recorded in config.json and kept on resume; and the inference caches keyed by
the device (accelerator and CPU cores), with ``--engine auto`` measuring TensorFlow
alone on a GPU host.

The end-to-end run splits the CPU into two logical devices (``--cpu-devices 2``), which
TensorFlow allows only before it starts, so it runs in a subprocess; the rest is fast.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import make_h5
from dgf.batching import BatchPlan, plan_batch
from dgf.config import TrainConfig, load_config_file, read_config, read_run_config, save_config
from dgf.errors import DgfError

REPO = Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"


# --- the batch setting --------------------------------------------------------------
def test_batch_size_auto_is_the_default_and_flags_files_and_python_read_it_alike(tmp_path,
                                                                                 capsys):
    from dgf.commands.training import flag_type, train_parser

    assert TrainConfig().batch_size == "auto"
    parse = flag_type("batch_size")
    (tmp_path / "auto.yaml").write_text("batch_size: Auto\n")
    (tmp_path / "four.json").write_text('{"batch-size": "4"}')
    assert load_config_file(tmp_path / "auto.yaml") == {"batch_size": parse("auto")} \
        == {"batch_size": "auto"}
    assert load_config_file(tmp_path / "four.json") == {"batch_size": parse("4")} \
        == {"batch_size": 4}
    assert TrainConfig(batch_size=4) == TrainConfig.from_dict({"batch_size": "4"})
    for bad, message in (("many", "batch_size must be an integer or 'auto', got 'many'"),
                         (2.5, "batch_size must be an integer or 'auto', got 2.5"),
                         (0, "batch_size must be > 0, got 0")):
        with pytest.raises(DgfError, match=message.replace("(", r"\(").replace(")", r"\)")):
            TrainConfig.from_dict({"batch_size": bad})
    with pytest.raises(SystemExit, match="2"):
        train_parser().parse_args(["--batch-size", "many"])
    assert "argument --batch-size: expected 'auto' or an integer, got 'many'" in \
        capsys.readouterr().err


def test_a_batch_that_does_not_split_is_refused_naming_the_replicas_and_nearest_sizes():
    with pytest.raises(DgfError, match="does not split evenly") as refused:
        plan_batch(3, 2)
    assert str(refused.value) == (
        "batch size 3 does not split evenly over 2 replicas; use 2 or 4 (a multiple of 2), "
        "or --batch-size auto for 1 per replica")
    with pytest.raises(DgfError, match=r"batch size 1 does not split evenly over 8 replicas; "
                                       r"use 8 or 16 \(a multiple of 8\)"):
        plan_batch(1, 8)  # the old default on 8 GPUs
    with pytest.raises(DgfError, match=r"over 4 replicas on 2 workers; use 12 or 16 "):
        plan_batch(14, 4, workers=2)
    # auto: 1 per replica, over every worker's replicas; an integer is the global batch.
    assert plan_batch("auto", 8) == BatchPlan("auto", 8, 8)
    assert plan_batch("auto", 4, workers=2).describe() == (
        "global batch 4 = 1 per replica x 4 replicas over 2 workers (--batch-size auto)")
    assert plan_batch(4, 2).describe() == "global batch 4 = 2 per replica x 2 replicas"
    assert plan_batch(6, 1).per_replica == 6


def test_a_resumed_auto_run_keeps_its_recorded_global_batch():
    recorded = BatchPlan("auto", 2, 2)
    assert plan_batch("auto", 1, recorded=recorded) == BatchPlan("auto", 1, 2)
    assert plan_batch("auto", 2, recorded=recorded).per_replica == 1
    # An integer given now wins; a recorded explicit batch is no auto run's.
    assert plan_batch(4, 1, recorded=recorded).global_batch == 4
    assert plan_batch("auto", 4, recorded=BatchPlan(2, 2, 2)).global_batch == 4
    with pytest.raises(DgfError, match="which a resume keeps") as refused:
        plan_batch("auto", 3, recorded=recorded)
    assert str(refused.value) == (
        "this run's global batch 2 (--batch-size auto on 2 replicas, which a resume keeps) "
        "does not split evenly over 3 replicas; resume it on a number of replicas that "
        "divides 2, or pass --batch-size 3 or 6 (a multiple of 3)")


def test_config_json_records_the_batch_and_a_resume_reads_it_back(tmp_path):
    from dgf.config import resolve_config

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    cfg = TrainConfig(run_dir=str(run), epochs=3)
    save_config(cfg, run / "config.json", plan_batch("auto", 2))
    saved = json.loads((run / "config.json").read_text())
    assert {k: saved[k] for k in ("batch_size", "replicas", "per_replica_batch",
                                  "global_batch")} == {
        "batch_size": "auto", "replicas": 2, "per_replica_batch": 1, "global_batch": 2}
    assert read_run_config(run / "config.json") == (cfg, BatchPlan("auto", 2, 2))
    resumed, resuming = resolve_config({"run_dir": str(run), "epochs": 4})
    assert resuming and resumed == cfg.replace(epochs=4)
    # A run folder from before the record reads as it did.
    save_config(TrainConfig(batch_size=4), tmp_path / "old.json")
    assert read_run_config(tmp_path / "old.json") == (TrainConfig(batch_size=4), None)
    # A record that does not add up is damage, named as such.
    (tmp_path / "bad.json").write_text(json.dumps({**saved, "global_batch": 3}))
    with pytest.raises(DgfError, match=r"bad.json is damaged \(its batch record "
                                       r".*does not add up with batch_size 'auto'\)"):
        read_config(tmp_path / "bad.json")


def _predictor(**fields):
    """A predictor (fp32) of a tiny generator, for what it would choose from."""
    from dgf.models import build_generator
    from dgf.predictor import Predictor
    from dgf.spec import InferenceSpec

    return Predictor(build_generator(channel_rate=4), InferenceSpec(precision="fp32", **fields))


# --- caches keyed by the device --------------------------------------------------
@pytest.mark.slow
def test_a_gpu_changes_the_cache_keys_and_auto_measures_tensorflow_alone(monkeypatch,
                                                                         capsys):
    from dgf import calibration, engines, host, runtime
    from dgf.engines import onnx_conversion

    assert host.device_description([]) == {"accelerator": "none", "cpu_cores": host.cores()}
    assert host.device_description(["B", "A", "B"])["accelerator"] == "1 x A + 2 x B"
    monkeypatch.setattr(runtime, "gpu_models", lambda: [])
    cpu_host = calibration.host_key("2.x", runtime.gpu_models())
    cpu_conversion = onnx_conversion.conversion_key("content")
    cpu_names = _predictor().candidates()
    installed = [e for e in ("onnxruntime", "openvino") if engines.engine(e).missing() is None]
    assert cpu_names == ["plain", "xla", *installed]

    monkeypatch.setattr(runtime, "gpu_models", lambda: [H100, H100])
    gpu_host = calibration.host_key("2.x", runtime.gpu_models())
    assert gpu_host == {**cpu_host, "accelerator": f"2 x {H100}"}
    assert onnx_conversion.conversion_key("content") == {**cpu_conversion,
                                                         "accelerator": f"2 x {H100}"}
    key = ("L", "fp32", (1, 8, 8, 3))
    assert calibration.entry_path(calibration.entry_key(gpu_host, *key)) != \
        calibration.entry_path(calibration.entry_key(cpu_host, *key))
    capsys.readouterr()
    assert _predictor().candidates() == ["plain", "xla"]
    assert _predictor(jit="on").candidates() == ["xla"]
    assert "--engine auto measures only TensorFlow on this GPU host (2 x NVIDIA H100 80GB " \
        "HBM3): the other engines would run on the CPU here" in capsys.readouterr().err
    assert _predictor(engine="onnxruntime").candidates() == ["onnxruntime"]  # named

    # The CPU cores this process may use are part of both keys too.
    monkeypatch.setattr(host, "cores", lambda: 96)
    assert calibration.host_key("2.x", [H100, H100])["cpu_cores"] == 96
    assert onnx_conversion.conversion_key("content") == {**cpu_conversion, "cpu_cores": 96,
                                                         "accelerator": f"2 x {H100}"}


# --- end to end on two logical CPU devices --------------------------------------
# One process (the CPU is split once): the refusal, then a run stopped after step 2
# by a SIGINT its own step raises (as Ctrl-C would), then its resume. Each phase
# notes the training pairs its loader reads.
_RUNS = textwrap.dedent("""
    import json, signal, sys
    from dgf import data
    from dgf.cli import train_main
    from dgf.train import GANTrainer

    common, root = json.loads(sys.argv[1]), sys.argv[2]
    reads = {"stopped": [], "resumed": []}
    read_into, step = data._FileReader.read_into, GANTrainer.step

    def noted(phase):
        def read(self, index, *args, **kwargs):
            if self._names[0].startswith("train_"):
                reads[phase].append(int(index))
            return read_into(self, index, *args, **kwargs)
        return read

    def stop_after_two(self, batch, warmup=False):
        logs = step(self, batch, warmup)
        if int(self.step_var.numpy()) == 2:
            signal.raise_signal(signal.SIGINT)
        return logs

    codes = {"refused": train_main([*common, "--run-dir", root + "/no", "--batch-size", "3"])}
    data._FileReader.read_into, GANTrainer.step = noted("stopped"), stop_after_two
    codes["stopped"] = train_main([*common, "--run-dir", root + "/run"])
    data._FileReader.read_into, GANTrainer.step = noted("resumed"), step
    codes["resumed"] = train_main([*common, "--run-dir", root + "/run"])
    print("RESULT " + json.dumps({"codes": codes, "reads": reads}))
""")


@pytest.mark.slow
def test_default_batch_on_two_cpu_devices_trains_checkpoints_and_resumes_exactly(tmp_path):
    from dgf.data import epoch_records, split_info

    h5 = make_h5(tmp_path / "data.h5", n_train=8, n_test=2, size=32)
    common = ["--cpu-devices", "2", "--strategy", "mirrored", "--h5", str(h5),
              "--epochs", "1", "--channel-rate", "4", "--blocks", "3", "--patch", "16",
              "--crop", "32", "--perceptual-weight", "0", "--val-samples", "2", "--strip-pairs", "2",
              "--log-every", "1", "--bn-recalibrate", "0", "--snapshots", "off",
              "--eval-engine", "tensorflow", "--eval-jit", "off", "--no-progress"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _RUNS, json.dumps(common), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ")[-1])
    assert result["codes"] == {"refused": 2, "stopped": 130, "resumed": 0}, done.stderr
    assert ("error: batch size 3 does not split evenly over 2 replicas; use 2 or 4 (a "
            "multiple of 2), or --batch-size auto for 1 per replica") in done.stderr
    assert not (tmp_path / "no").exists()

    # The first line states the split: 8 pairs at global batch 2 are 4 steps.
    run = tmp_path / "run"
    split = "global batch 2 = 1 per replica x 2 replicas (--batch-size auto), 4 steps per epoch"
    assert f"training into {run}: {split}" in done.stdout
    assert f"resuming {run} at epoch 1, step 2: {split}" in done.stdout
    assert "done: 4 steps" in done.stdout  # what an uninterrupted run ends at
    saved = json.loads((run / "config.json").read_text())
    assert (saved["batch_size"], saved["replicas"], saved["per_replica_batch"],
            saved["global_batch"]) == ("auto", 2, 1, 2)
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.index")) == [
        "ckpt-2.index", "ckpt-4.index"]
    assert (run / "tensorboard").is_dir() and (run / "generator.keras").is_file()
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == [1, 2, 3, 4]
    assert [r["epoch"] for r in steps if r["kind"] == "epoch"] == [1]

    # Resumed exactly: the resumed run read the epoch plan's last two global batches of
    # 2 pairs, and nothing of the two the stopped run trained on.
    plan = epoch_records(split_info(h5, "train"), (32, 32), training=True, seed=0,
                         epoch=0)[:, 0].tolist()
    reads = result["reads"]
    assert sorted(reads["stopped"][:4]) == sorted(plan[:4])
    assert sorted(reads["resumed"]) == sorted(plan[4:8])
