"""Every bad config value fails before anything trains or is written, in one line that names the key."""

import dataclasses

import pytest

import harness
from harness.errors import HarnessError
from tests.conftest import FAST, compose_config

BAD_VALUES = [
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be a number > 0"),
    (["optimizer.lr=0"], "optimizer.lr=0 must be a number > 0"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' must be a number > 0"),
    (["optimizer.lr=nan"], "optimizer.lr=nan must be a number > 0"),
    (["optimizer.momentum=1.5"], "optimizer.momentum=1.5 must be in [0, 1)"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1 must be a number >= 0"),
    (["data.batch_size=0"], "data.batch_size=0 must be an integer >= 1"),
    (["data.batch_size=8.5"], "data.batch_size=8.5 must be an integer >= 1"),
    (["data.num_workers=-1"], "data.num_workers=-1 must be an integer >= 0"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be an integer >= 1"),
    (["trainer.max_epochs=ten"], "trainer.max_epochs='ten' must be an integer >= 1"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 must be an integer >= 1"),
    (["trainer.grad_clip=-1"], "trainer.grad_clip=-1 must be a number >= 0"),
    (["trainer.grad_clip=inf"], "trainer.grad_clip=inf must be a number >= 0"),
    (["trainer.checkpoint_every_n_epochs=-1"], "trainer.checkpoint_every_n_epochs=-1 must be an integer >= 0"),
    (["trainer.precision=fp8"], "trainer.precision='fp8' must be one of 32, bf16, 16-mixed"),
    (["trainer.monitor=val/f2"], "trainer.monitor='val/f2' is not a metric of this run; choose one of train/loss, "
                                 "val/loss, val/acc, val/top5_acc, val/f1"),
    (["trainer.monitor=test/acc"], "trainer.monitor='test/acc' must be a train/ or val/ metric"),
    (["trainer.monitor=val/r2", "task=regression", "data=digits"], "this task trains on real values, but the data "
                                                                    "gives class labels"),
    (["trainer.monitor_mode=up"], "trainer.monitor_mode='up' must be one of auto, max, min"),
    (["task.metrics.acc=3"], "task.metrics={'acc': 3, "),
    (["data.train_transforms=5"], "data.train_transforms=5 must be a list of {_target_: ...} entries"),
    (["data.test_fraction=0.9"], "data.val_fraction=0.2 + test_fraction=0.9 leaves no training data out of 1797"),
    (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite='ignore' must be one of stop, skip_batch"),
    (["trainer.nonfinite_patience=0"], "trainer.nonfinite_patience=0 must be an integer >= 1"),
    (["+trainer.max_epoch=2"], "trainer.max_epoch is not a trainer setting"),
    (["optimized_metric=val/f2"], "optimized_metric='val/f2' is not a metric of this run; choose one of train/loss"),
    (["optimized_metric=test/acc"], "optimized_metric='test/acc' is not a metric of this run (the test split only "
                                    "reports; choose on validation)"),
    (["resume=''"], "resume='' must be null, auto, a run directory or a .pt file"),
    (["resume=/no/such/run"], "resume=/no/such/run: no such run directory or checkpoint file"),
    (["data=mnist", "data.root=nowhere", "data.download=false"], "MNIST not found under"),
    (["model._partial_=false"], "model: MLP.__init__() missing 2 required positional arguments"),
    (["optimizer._partial_=false"], "optimizer: its YAML needs `_partial_: true`, since the harness passes"),
    (["trainer.device=gpu"], "trainer.device='gpu' must be auto, cpu, cuda or cuda:N"),
    (["trainer.progress_bar=maybe"], "trainer.progress_bar='maybe' must be true or false"),
    (["seed=-3"], "seed=-3 must be an integer >= 0"),
    (["scheduler.interval=batch"], "scheduler.interval='batch' must be one of epoch, step"),
    (
        ["scheduler.warmup_epochs=4"],
        "scheduler.warmup_epochs=4 must be < scheduler.total_epochs=4 (it follows trainer.max_epochs)",
    ),
    (
        ["scheduler.warmup_epochs=60", "scheduler.total_epochs=50"],
        "scheduler.warmup_epochs=60 must be < scheduler.total_epochs=50",
    ),
    (["scheduler.warmup_epochs=-1"], "scheduler.warmup_epochs=-1 must be a number >= 0"),
    (["scheduler.total_epochs=0"], "scheduler.total_epochs=0 must be a number > 0"),
    (["scheduler.min_lr=0.5"], "scheduler.min_lr=0.5 must be <= optimizer.lr=0.1"),
    (["scheduler.min_lr=-1.0"], "scheduler.min_lr=-1.0 must be a number >= 0"),
    (["scheduler.min_lr=[0.0,0.001]"], "scheduler.min_lr has 2 values but the optimizer has 1 param groups"),
    (["model.hidden=[0]"], "model.hidden=[0] must be a non-empty list of integers >= 1"),
    (["model.dropout=1.0"], "model.dropout=1.0 must be in [0, 1)"),
    (["model._target_=harness.models.Nope"], "model: Error locating target 'harness.models.Nope'"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0 must be a number between 0 and 1 (exclusive)"),
    (["data.val_fraction=abc"], "data.val_fraction='abc' must be a number between 0 and 1 (exclusive)"),
    (["data=fake", "data.image_size=[3,32]"], "data.image_size=[3, 32] must be [channels, height, width]"),
    (["data=fake", "data.train_size=0"], "data.train_size=0 must be an integer >= 1"),
    (["data=mnist", "data.download=maybe"], "data.download='maybe' must be true or false"),
    (["data=imagefolder", "data.root=.", "data.image_size=0"], "data.image_size=0 must be an integer >= 1"),
    (["model=cnn", "model.channels=[]"], "model.channels=[] must be a non-empty list of integers >= 1"),
    (["optimizer.nesterov=true", "optimizer.momentum=0"], "optimizer: Nesterov momentum requires a momentum"),
    (["data=imagefolder"], "data.root is not set (???); pass it on the command line: data.root=VALUE"),
    (["data=imagefolder", "data.root=/no/such/folder"], "data.root=/no/such/folder"),
    (["optimizer=adamw", "optimizer.betas=[2.0,0.9]"], "optimizer.betas=[2.0, 0.9] must be two numbers in [0, 1)"),
    (["optimizer=adamw", "optimizer.betas=5"], "optimizer.betas=5 must be two numbers in [0, 1), e.g. [0.9,0.999]"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES)
def test_a_bad_value_fails_in_one_line_and_writes_nothing(tmp_path, overrides, message):
    with pytest.raises(HarnessError) as info:
        harness.run(compose_config([*FAST, *overrides]), tmp_path / "run")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists(), "nothing written"


def test_the_trainer_yaml_and_its_schema_agree():
    from harness.config import trainer_config
    from harness.loop import TrainerConfig

    # monitor follows the task in the YAML (val/acc for classification); the schema's default needs no task
    yaml = trainer_config(compose_config())
    yaml = dataclasses.replace(yaml, monitor="val/loss",
                               early_stopping=dataclasses.replace(yaml.early_stopping, monitor="val/loss"))
    assert yaml == TrainerConfig(), "conf/trainer/default.yaml and TrainerConfig differ"
