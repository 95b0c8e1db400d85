"""Scale and speed: accumulation, precision, compile, the on-device loader, torchrun (DDP) on CPU."""


import pytest
import torch

import harness
from harness.build import build
from harness.checkpoint import load_checkpoint
from harness.data import TensorLoader
from harness.errors import ConfigError
from tests.conftest import FAST, compose_config, train

NO_DROPOUT = [*FAST, "model.dropout=0.0", "scheduler.warmup_epochs=1", "trainer.max_epochs=3"]


def test_accumulating_two_batches_of_b_matches_one_batch_of_2b(tmp_path):
    # 1079 training digits: 67 batches of 16 and one of 7, which the accumulation's last group holds alone
    one = harness.run(compose_config([*NO_DROPOUT, "data.batch_size=16"]), tmp_path / "one")
    two = harness.run(compose_config([*NO_DROPOUT, "data.batch_size=8", "trainer.accumulate_grad_batches=2"]),
                      tmp_path / "two")
    assert two["step"] == one["step"] == 3 * 68
    for key in ("train/loss", "val/loss", "val/acc"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key
    a = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_accumulation_counts_optimizer_steps_for_a_step_schedule():
    c = build(compose_config([*FAST, "scheduler.interval=step", "data.batch_size=32",
                              "trainer.accumulate_grad_batches=4"]))
    assert len(c.train_loader) == 34
    assert c.scheduler.steps_per_epoch == 9  # ceil(34 / 4)


def test_bf16_trains_on_cpu(tmp_path):
    metrics = harness.run(compose_config([*FAST, "trainer.precision=bf16"]), tmp_path)
    assert metrics["val/acc"] > 0.9


def test_fp16_needs_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="trainer.precision=16-mixed needs CUDA"):
        build(compose_config([*FAST, "trainer.precision=16-mixed"]))
    with pytest.raises(ConfigError, match="trainer.precision='fp8' must be one of 32, bf16, 16-mixed"):
        build(compose_config([*FAST, "trainer.precision=fp8"]))


@pytest.mark.parametrize("on_device", [True, False])
def test_on_device_and_dataloader_paths_resume_alike(tmp_path, on_device):
    flag = f"data.on_device={str(on_device).lower()}"
    full = harness.run(compose_config([*NO_DROPOUT, flag]), tmp_path / "full")
    harness.run(compose_config([*NO_DROPOUT, flag, "trainer.max_epochs=1", "scheduler.total_epochs=3"]),
                tmp_path / "split")
    resumed = harness.run(compose_config([*NO_DROPOUT, flag, "resume=auto"]), tmp_path / "split")
    assert resumed == full


def test_tensor_loader_shards_cover_the_shuffle_once():
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)
    orders = []
    for rank in range(3):
        loader = TensorLoader((x, y), batch_size=2, shuffle=True, seed=0, rank=rank, world_size=3)
        assert len(loader) == 2  # ceil(10 / 3) = 4 samples each
        orders.append(torch.cat([b[1] for b in loader]).tolist())
    single = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    padded = single + single[:2]
    assert [padded[r::3] for r in range(3)] == orders
    val_shares = [torch.cat([b[1] for b in TensorLoader((x, y), 4, rank=r, world_size=3, pad=False)]).tolist()
                  for r in range(3)]
    assert sorted(sum(val_shares, [])) == list(range(10))


def test_tensor_loader_shuffle_is_a_function_of_seed_and_epoch():
    x, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    loader = TensorLoader((x, y), batch_size=4, shuffle=True, seed=3)
    epochs = []
    for epoch in (0, 1, 0):
        loader.set_epoch(epoch)
        epochs.append(torch.cat([b[1] for b in loader]).tolist())
    assert epochs[0] == epochs[2] != epochs[1]
    assert sorted(epochs[1]) == list(range(10))
    in_order = [b[1].tolist() for b in TensorLoader((x, y), batch_size=4)]
    assert in_order == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.slow
def test_compile_trains_and_checkpoints_plain_weights(tmp_path):
    metrics = harness.run(compose_config([*FAST, "trainer.compile=true", "trainer.max_epochs=2",
                                          "scheduler.warmup_epochs=1"]), tmp_path)
    assert metrics["epoch"] == 2
    keys = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"].keys()
    assert not any(k.startswith("_orig_mod") for k in keys)


@pytest.mark.slow
def test_torchrun_stopped_by_a_signal_to_one_rank_resumes_and_matches_one_process(tmp_path):
    # 2 ranks x batch 32 = one process x batch 64: 17 steps an epoch (1080 training digits, so the ranks' halves
    # need no padding). Rank 0 alone gets SIGTERM after step 25; the ranks agree to stop at the next logging
    # point (step 30), rank 0 saves, and the resume finishes.
    common = [*NO_DROPOUT[1:], "trainer.log_every_n_steps=10", "data.val_fraction=0.1992"]
    harness.run(compose_config([*common, "data.batch_size=64"]), tmp_path / "single")  # in this process
    ddp = [*common, "data.batch_size=32", "hydra.run.dir=ddp"]
    stopped = train(ddp, tmp_path, torchrun=2, signal_at_step=25)
    assert stopped.returncode != 0
    assert stopped.stderr.count("stopped by SIGTERM at epoch 2, step 30") == 1, stopped.stderr[-3000:]
    assert "resume with: torchrun --nproc_per_node=2 train.py" in stopped.stderr
    last = tmp_path / "ddp" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["train_state"]["batch"] == 13
    resumed = train([*ddp, "resume=auto"], tmp_path, torchrun=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(list((tmp_path / "ddp").glob("events.out.tfevents.*"))) == 2, "only rank 0 writes TensorBoard"
    a = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["train_state"]["metrics"]
    b = load_checkpoint(last)["train_state"]["metrics"]
    assert b["step"] == a["step"] == 3 * 17
    for key in ("train/loss", "val/loss", "val/acc"):  # same samples per step; only float sums differ
        assert b[key] == pytest.approx(a[key], rel=1e-4), key


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["32", "bf16", "16-mixed"])
def test_cuda_precisions_train_and_checkpoint_the_scaler(tmp_path, precision):
    cfg = compose_config([*FAST, "trainer.device=cuda", f"trainer.precision={precision}", "model=cnn"])
    metrics = harness.run(cfg, tmp_path)
    assert metrics["val/acc"] > 0.9
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert bool(ckpt["scaler"]) == (precision == "16-mixed")
    c = build(cfg)
    assert c.optimizer.defaults.get("fused") is True  # fused SGD on CUDA
    assert c.train_loader.tensors[0].device.type == "cuda"  # digits live on the GPU
