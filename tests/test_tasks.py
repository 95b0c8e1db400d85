"""Tasks: the loss and metrics from config, their directions, the final test with best.pt, and eval.py."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import harness
from harness.build import build_task
from harness.config import metric_direction_of
from harness.data import DataSplits, diabetes, digits
from harness.errors import ConfigError, HarnessError
from harness.evaluation import evaluate_checkpoint, find_checkpoint, record_evaluation
from harness.loop import evaluate
from tests.conftest import FAST, ROOT, compose_config

CPU = torch.device("cpu")


def task_of(name: str, splits: DataSplits):
    return build_task(compose_config([f"task={name}"]).task, splits, CPU)


def scores(predictions, targets, task) -> dict:
    """``evaluate`` of a model that outputs ``predictions`` as they are, in batches of 2."""
    loader = DataLoader(TensorDataset(torch.as_tensor(predictions), torch.as_tensor(targets)), batch_size=2)
    return evaluate(torch.nn.Identity(), loader, CPU, task.loss, task.metrics)


def test_the_task_table():
    classification, regression = task_of("classification", digits()), task_of("regression", diabetes())
    assert classification.names("val") == ["val/loss", "val/acc", "val/top5_acc", "val/f1"]
    assert regression.names("test") == ["test/loss", "test/mae", "test/rmse", "test/r2"]
    assert [classification.direction(m) for m in classification.names()] == ["min", "max", "max", "max"]
    assert [regression.direction(m) for m in regression.names()] == ["min", "min", "min", "max"]
    assert compose_config(["task=regression"]).trainer.monitor == "val/r2"
    assert compose_config().optimized_metric == "val/acc"


def test_classification_metrics_against_hand_computed_values():
    logits = [[5.0, 1, 0, 0, 0, 0, 0], [0, 5, 1, 0, 0, 0, 0], [0, 0, 5, 4, 3, 2, 1], [5, 4, 3, 2, 1, 0, 0],
              [0, 0, 0, 0, 0, 5, 0]]
    labels = [0, 1, 3, 6, 5]  # right, right, wrong (2nd), wrong (not in the top 5), right
    splits = DataSplits(None, None, None, (7,), 7)
    out = scores(logits, labels, task_of("classification", splits))
    assert out["val/acc"] == pytest.approx(3 / 5)
    assert out["val/top5_acc"] == pytest.approx(4 / 5)
    # F1 per class, the mean over the 6 classes that occur as label or prediction (class 4 does neither):
    # 0: one right, one false alarm (sample 4): 2/3; 1: 1; 2: a false alarm: 0; 3, 6: missed: 0; 5: 1
    assert out["val/f1"] == pytest.approx((2 / 3 + 1 + 0 + 0 + 0 + 1) / 6)
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels)).item()
    assert out["val/loss"] == pytest.approx(expected, rel=1e-6)


def test_regression_metrics_against_hand_computed_values():
    predictions, targets = [[1.0], [2.0], [3.0], [5.0]], [[1.0], [3.0], [3.0], [7.0]]
    out = scores(predictions, targets, task_of("regression", diabetes()))
    errors = [0.0, -1.0, 0.0, -2.0]
    assert out["val/mae"] == pytest.approx(3 / 4)
    assert out["val/rmse"] == pytest.approx((5 / 4) ** 0.5)
    assert out["val/loss"] == pytest.approx(5 / 4)
    mean = 14 / 4
    assert out["val/r2"] == pytest.approx(1 - sum(e * e for e in errors) / sum((t - mean) ** 2 for t in (1, 3, 3, 7)))


def test_huber_is_a_knob_and_top5_is_left_out_for_few_classes():
    huber = build_task(compose_config(["task=regression", "task.loss.kind=huber", "task.loss.delta=0.5"]).task,
                       diabetes(), CPU)
    assert isinstance(huber.loss, torch.nn.HuberLoss) and huber.loss.delta == 0.5
    three = build_task(compose_config().task, DataSplits(None, None, None, (4,), 3), CPU)
    assert list(three.metrics) == ["acc", "f1"]


def test_metric_directions_from_the_config():
    cfg = compose_config(["task=regression"])
    assert [metric_direction_of(cfg, m) for m in ("val/mae", "val/r2", "train/loss", "test/rmse")] == [
        "min", "max", "min", "min"]
    with pytest.raises(ConfigError, match="'val/acc' is not a metric of this task; it has loss, mae, rmse, r2"):
        metric_direction_of(cfg, "val/acc")
    assert metric_direction_of(compose_config(["trainer.monitor_mode=min"]), "val/acc") == "min"


def test_regression_on_diabetes_matches_ridge_regression(tmp_path):
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    metrics = harness.run(compose_config(["task=regression", "data=diabetes", "trainer.progress_bar=false",
                                          "trainer.device=cpu"]), tmp_path)
    splits = diabetes()
    (x, y), (x_test, y_test) = splits.train.tensors, splits.test.tensors
    ridge = RidgeCV(alphas=[0.01, 0.1, 1.0, 10.0, 100.0]).fit(x.numpy(), y.numpy().ravel())
    bar = r2_score(y_test.numpy().ravel(), ridge.predict(x_test.numpy())) - 0.03
    assert metrics["test/r2"] >= bar, (metrics["test/r2"], bar)


def test_the_final_test_uses_best_pt_and_eval_reproduces_every_logged_number(tmp_path):
    # the training loss as the monitor, higher taken as better: only the first epoch is a best
    cfg = compose_config([*FAST, "trainer.max_epochs=3", "trainer.monitor=train/loss", "trainer.monitor_mode=max"])
    metrics = harness.run(cfg, tmp_path)
    best, last = tmp_path / "checkpoints" / "best.pt", tmp_path / "checkpoints" / "last.pt"
    best_state = torch.load(best, weights_only=True)["train_state"]
    assert metrics["test/epoch"] == best_state["epoch"] == 1
    tested = {k: v for k, v in metrics.items() if k.startswith("test/") and k != "test/epoch"}
    assert evaluate_checkpoint(best, "test") == tested, "to the last digit"
    assert evaluate_checkpoint(last, "test") != tested
    logged = best_state["metrics"]
    assert evaluate_checkpoint(best, "val") == {k: v for k, v in logged.items() if k.startswith("val/")}
    assert find_checkpoint(str(tmp_path)) == best
    record_evaluation(best, "test", tested, {})
    record_evaluation(best, "val", {"val/acc": 1.0}, {})
    record_evaluation(last, "test", {"test/acc": 0.5}, {})
    records = json.loads((tmp_path / "checkpoints" / "eval.json").read_text())
    assert records["best.pt"]["test"]["metrics"] == tested and set(records) == {"best.pt", "last.pt"}
    assert set(records["best.pt"]) == {"test", "val"}, "an evaluation adds to eval.json, never replaces it"


def test_eval_of_bad_input_is_one_line(tmp_path):
    harness.run(compose_config([*FAST, "trainer.max_epochs=1"]), tmp_path)
    best = tmp_path / "checkpoints" / "best.pt"
    with pytest.raises(ConfigError, match="data.rot is not a setting of the checkpoint's data"):
        evaluate_checkpoint(best, "test", {"rot": 3})
    with pytest.raises(ConfigError, match="split='train' must be one of test, val"):
        evaluate_checkpoint(best, "train")
    with pytest.raises(HarnessError, match="ckpt_path=.*nope: no such run directory or checkpoint file"):
        find_checkpoint(str(tmp_path / "nope"))
    (tmp_path / "bad.pt").write_bytes(best.read_bytes()[:100])
    with pytest.raises(HarnessError, match="ckpt_path=.*bad.pt is not a readable checkpoint"):
        evaluate_checkpoint(tmp_path / "bad.pt")


@pytest.mark.slow
def test_eval_py_as_a_user_runs_it(tmp_path):
    harness.run(compose_config([*FAST, "trainer.max_epochs=2"]), tmp_path / "run")

    def eval_py(*args):
        return subprocess.Popen([sys.executable, str(ROOT / "eval.py"), f"ckpt_path={tmp_path / 'run'}", *args],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    good, wrong = eval_py("split=val", "data.batch_size=7"), eval_py("data.rot=1")  # both at once: a faster suite
    ok, bad = (subprocess.CompletedProcess(p.args, 0, *p.communicate(timeout=120)) for p in (good, wrong))
    ok.returncode, bad.returncode = good.returncode, wrong.returncode
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "best.pt on val: val/loss" in ok.stdout and "recorded in" in ok.stdout
    records = json.loads((tmp_path / "run" / "checkpoints" / "eval.json").read_text())
    assert records["best.pt"]["val"]["data_changes"] == {"batch_size": 7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "eval.py makes no run directory"
    assert bad.returncode == 1 and bad.stderr.startswith("error: data.rot is not a setting")
    assert len(bad.stderr.strip().splitlines()) == 1
