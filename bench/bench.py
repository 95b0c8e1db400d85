"""Benchmark: the harness against a minimal hand-written PyTorch loop (and Lightning, if installed).

Each contender trains the same model on the same data (the bundled digits, on the device), with the same
batch size, optimizer, schedule and number of optimizer steps, in a fresh process, one after another.
Reported per contender:

* steps/s   optimizer steps per second from the first step to the end of training, validation after every
            epoch included for all (and for the harness its checkpoints, TensorBoard writes and final flush),
            the best of the rounds;
* vs hand   the contender's steps/s over the hand-written loop's in the same round (they run one after the
            other), the median over the rounds: a slow spell of the machine hits both sides of a pair, and
            the median drops the rounds it split;
* start-up  seconds from process start to the end of the first optimizer step;
* peak RSS  the process's peak resident memory (and peak CUDA memory with --device cuda).

Two models: the default MLP (hidden 256) and a tiny MLP (hidden 16), where per-step overhead shows most.
The harness runs through `train.py` exactly as a user starts it, with TensorBoard logging, checkpoints, the
epoch log lines (console and train.log) and the progress bar at their defaults; its stderr is made to look
like a terminal, so the bar is drawn (into /dev/null) as a user would see it. Contenders:

* hand-written loop         the minimal loop: no logging, no checkpoints (the reference for the ratios);
* hand loop + torch.save    the same plus a nanoGPT-style `torch.save` of model and optimizer every epoch,
                            the like-for-like reference for "harness, ckpt every epoch";
* harness                   `python train.py` at its defaults (`last.pt` after every epoch but at most once a
                            second, `best.pt` on every improvement);
* harness, ckpt every epoch `trainer.checkpoint_min_interval_s=0`: a complete, fsynced `last.pt` after every
                            epoch, however short (the digits epochs here are 10-15 ms);
* lightning                 Lightning's Trainer at its defaults, with the `bench` extra installed.

Usage: python bench/bench.py [--steps 3000] [--device cpu|cuda] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"default MLP (hidden 256)": [256], "tiny MLP (hidden 16)": [16]}
BATCH, LR, WARMUP = 64, 0.1, 3


def _epochs(steps: int, steps_per_epoch: int) -> int:
    return max(WARMUP + 1, -(-steps // steps_per_epoch))


def _record_first_step() -> dict:
    """Registers a global optimizer hook that notes when the first step ends and counts steps."""

    marks = {"first": None, "steps": 0}

    def hook(optimizer, args, kwargs):
        marks["steps"] += 1
        if marks["first"] is None:
            marks["first"] = time.time()

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(hook)
    return marks


def _peak(device: str) -> dict:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class _Terminal:
    """A stderr that says it is a terminal, so progress bars draw (into /dev/null) as they would for a user."""

    def __init__(self) -> None:
        self._sink = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the worker process)

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name):
        return getattr(self._sink, name)


def worker_plain(hidden: list[int], steps: int, device: str, t0: float, save_every_epoch: bool = False) -> dict:
    """The minimal loop someone would write by hand for the same job: tensors on the device, a shuffle per
    epoch, and the validation loss and accuracy after every epoch (the harness reports them too); with
    ``save_every_epoch``, also a plain ``torch.save`` of the model and optimizer after every epoch."""
    import torch
    import torch.nn.functional as F

    from harness.data import digits
    from harness.models import MLP
    from harness.schedulers import CosineWarmupScheduler

    marks = _record_first_step()
    torch.manual_seed(0)
    splits = digits()
    x, y = (t.to(device) for t in splits.train.tensors)
    val_x, val_y = (t.to(device) for t in splits.val.tensors)
    model = MLP(splits.input_shape, splits.num_classes, hidden=hidden, dropout=0.1).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = -(-len(y) // BATCH)
    epochs = _epochs(steps, steps_per_epoch)
    scheduler = CosineWarmupScheduler(optimizer, WARMUP, epochs, 1e-3)
    g = torch.Generator().manual_seed(0)
    tmp = tempfile.TemporaryDirectory()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=g).to(device)
        for i in range(0, len(y), BATCH):
            idx = order[i : i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(val_x)
            val_loss = F.cross_entropy(logits, val_y).item()
            val_acc = (logits.argmax(1) == val_y).float().mean().item()
        scheduler.step()
        if save_every_epoch:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1},
                       f"{tmp.name}/ckpt.pt")
    final_loss = loss.item()
    end = time.time()
    tmp.cleanup()
    return {"steps": marks["steps"], "seconds": end - marks["first"], "startup_s": marks["first"] - t0,
            "final_loss": final_loss, "val_loss": val_loss, "val_acc": val_acc, **_peak(device)}


def worker_harness(hidden: list[int], steps: int, device: str, t0: float, *extra: str) -> dict:
    """`python train.py` with the same settings, run in this process so the hook sees its steps."""
    import runpy

    marks = _record_first_step()
    sys.stderr = _Terminal()
    steps_per_epoch = -(-1438 // BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = [
            str(ROOT / "train.py"),
            f"model.hidden={hidden}", f"trainer.max_epochs={_epochs(steps, steps_per_epoch)}",
            f"scheduler.warmup_epochs={WARMUP}", f"optimizer.lr={LR}", f"data.batch_size={BATCH}",
            f"trainer.device={device}", f"hydra.run.dir={tmp}/run",
            *extra,
        ]
        try:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        except SystemExit as e:
            if e.code:
                raise
        end = time.time()
    return {"steps": marks["steps"], "seconds": end - marks["first"], "startup_s": marks["first"] - t0,
            **_peak(device)}


def worker_lightning(hidden: list[int], steps: int, device: str, t0: float) -> dict:
    """Lightning's Trainer at its defaults (TensorBoard logger, progress bar, checkpointing)."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from harness.data import digits
    from harness.models import MLP
    from harness.schedulers import CosineWarmupScheduler

    marks = _record_first_step()
    torch.manual_seed(0)
    splits = digits()
    steps_per_epoch = -(-len(splits.train) // BATCH)
    epochs = _epochs(steps, steps_per_epoch)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = MLP(splits.input_shape, splits.num_classes, hidden=hidden, dropout=0.1)

        def training_step(self, batch, _):
            x, y = batch
            loss = F.cross_entropy(self.model(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
            return [opt], [CosineWarmupScheduler(opt, WARMUP, epochs, 1e-3)]

    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_epochs=epochs, accelerator=device, devices=1, default_root_dir=tmp,
                            enable_model_summary=False)
        trainer.fit(Module(), DataLoader(splits.train, batch_size=BATCH, shuffle=True))
        end = time.time()
    return {"steps": marks["steps"], "seconds": end - marks["first"], "startup_s": marks["first"] - t0,
            **_peak(device)}


WORKERS = {
    "hand-written loop": worker_plain,
    "hand loop + torch.save": lambda *a: worker_plain(*a, save_every_epoch=True),
    "harness": worker_harness,
    "harness, ckpt every epoch": lambda *a: worker_harness(*a, "trainer.checkpoint_min_interval_s=0"),
    "lightning": worker_lightning,
}


def spawn(contender: str, model: str, steps: int, device: str) -> dict:
    env = {**os.environ, "BENCH_T0": repr(time.time()), "PYTHONPATH": str(ROOT)}
    args = [sys.executable, __file__, "--worker", contender, "--model", model, "--steps", str(steps),
            "--device", device]
    result = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{contender} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def import_torch_seconds() -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per contender (rounded up to epochs)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=7, help="rounds: runs per contender, interleaved")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = WORKERS[args.worker](MODELS[args.model], args.steps, args.device, float(os.environ["BENCH_T0"]))
        print(json.dumps(result))
        return

    contenders = ["hand-written loop", "hand loop + torch.save", "harness", "harness, ckpt every epoch"]
    try:
        import lightning  # noqa: F401

        contenders.append("lightning")
    except ImportError:
        print("(lightning not installed: pip install -e '.[bench]' to compare against it)")
    import platform

    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"device {args.device}, {args.steps} steps, batch {BATCH}, {args.repeats} rounds")
    baseline = min(import_torch_seconds() for _ in range(args.repeats))
    print(f"python -c 'import torch': {baseline:.2f} s\n")
    header = (f"{'model':<26} {'contender':<25} {'steps/s':>9} {'vs hand':>8} {'start-up s':>10} {'+import':>8} "
              f"{'peak RSS MB':>11}" + (f" {'CUDA MB':>9}" if args.device == "cuda" else ""))
    print(header)
    print("-" * len(header))
    for model in MODELS:
        runs = {c: [] for c in contenders}
        for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits all alike
            for contender in contenders:
                runs[contender].append(spawn(contender, model, args.steps, args.device))
        hand_runs = [r["steps"] / r["seconds"] for r in runs["hand-written loop"]]
        results = {
            c: {
                "steps_per_s": max(r["steps"] / r["seconds"] for r in rs),
                "vs_hand": statistics.median(r["steps"] / r["seconds"] / h for r, h in zip(rs, hand_runs)),
                "startup_s": min(r["startup_s"] for r in rs),
                "peak_rss_mb": min(r["peak_rss_mb"] for r in rs),
                **({"peak_cuda_mb": min(r["peak_cuda_mb"] for r in rs)} if args.device == "cuda" else {}),
            }
            for c, rs in runs.items()
        }
        for contender, r in results.items():
            cuda = f" {r['peak_cuda_mb']:>9.0f}" if "peak_cuda_mb" in r else ""
            print(f"{model:<26} {contender:<25} {r['steps_per_s']:>9.0f} {r['vs_hand']:>8.3f} "
                  f"{r['startup_s']:>10.2f} {r['startup_s'] - baseline:>+8.2f} {r['peak_rss_mb']:>11.0f}{cuda}")


if __name__ == "__main__":
    main()
