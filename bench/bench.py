"""Benchmark: the harness against a minimal hand-written PyTorch loop (and Lightning, if installed).

Every contender trains the same model on the same data with the same batch size, optimizer (SGD, Nesterov
momentum, weight decay), warmup + cosine schedule and number of epochs, each run in a fresh process. The
rounds are interleaved (one run of every contender, then the next round), so a slow spell of the machine
hits all contenders of a round alike. Workloads:

* default MLP (hidden 256)  the default `python train.py`: digits kept on the device, 17 steps an epoch;
* tiny MLP (hidden 16)      the same with a tiny model, where per-step overhead shows most;
* SmallCNN, FakeData        `model=cnn` on CIFAR-shaped (3x32x32) FakeData images through a DataLoader with
                            2 workers: a realistic job, epochs of seconds.

Contenders:

* hand-written loop         the minimal loop someone would write: a shuffle per epoch, a validation pass per
                            epoch (loss and accuracy), no logging, no checkpoints; the reference of the ratios;
* hand loop + torch.save    the same plus a plain `torch.save` of model and optimizer after every epoch;
* harness                   `python train.py` at its defaults (TensorBoard, a synchronous atomic `last.pt`
                            every epoch and `best.pt` on improvements, the epoch log lines, and the progress
                            bar drawn into a fake terminal that discards it);
* harness, last.pt at the end   the same with `trainer.checkpoint_every_n_epochs=0`: the loop and its
                            logging without the per-epoch save;
* lightning                 Lightning's Trainer at its defaults (only with the `bench` extra installed).

Columns (medians over the rounds): steps/s from the end of the first optimizer step to the end of training,
validation and saving included; vs hand, the paired ratio to the hand loop's steps/s of the same round; the
overhead that ratio means in microseconds per step and milliseconds per epoch; start-up, seconds from
process start to the end of the first step, and its paired difference to the hand loop's; peak RSS of the
training process (and peak CUDA memory with --device cuda). After the table, the time a synchronous atomic
save of a resnet18 checkpoint takes, against an epoch. See bench/README.md.

Usage: python bench/bench.py [--steps 3000] [--cnn-epochs 3] [--device cpu|cuda] [--repeats 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, LR, MOMENTUM, WEIGHT_DECAY, WARMUP, MIN_LR = 64, 0.1, 0.9, 5e-4, 3, 1e-3
DIGITS_TRAIN = 1079  # harness.data.digits(): 1797 images, 20% held out for validation and 20% for the test
CNN_SHAPE, CNN_CLASSES, CNN_WORKERS = [3, 32, 32], 10, 2
WORKLOADS = {  # --workloads name: (the table's label, the job)
    "mlp": ("default MLP (hidden 256)", {"kind": "mlp", "hidden": [256]}),
    "tiny": ("tiny MLP (hidden 16)", {"kind": "mlp", "hidden": [16]}),
    "cnn": ("SmallCNN, FakeData 3x32x32, DataLoader 2 workers", {"kind": "cnn"}),
}
HAND = "hand-written loop"
BAR = 0.02  # an asynchronous save comes back if a synchronous one costs more than this share of an epoch


# --- the workers: one training run each, in its own process -----------------------------------------------

def _record_steps() -> dict:
    """Registers a global optimizer post-step hook that counts steps and notes when the first one ended."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    marks = {"first": None, "steps": 0}

    def hook(optimizer, args, kwargs):
        marks["steps"] += 1
        if marks["first"] is None:
            marks["first"] = time.time()

    register_optimizer_step_post_hook(hook)
    return marks


def _result(marks: dict, end: float, job: dict) -> dict:
    """What a worker reports: steps, seconds from the first step to ``end``, start-up and peak memory."""
    import torch

    out = {"steps": marks["steps"], "seconds": end - marks["first"], "startup_s": marks["first"] - job["t0"],
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if job["device"] == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _splits(job: dict):
    """The workload's data: digits for the MLPs, CIFAR-shaped FakeData for the CNN."""
    from harness.data import digits, fake

    if job["kind"] == "mlp":
        return digits()
    return fake(train_size=job["train_size"], val_size=job["val_size"], image_size=CNN_SHAPE, num_classes=CNN_CLASSES)


def _model(job: dict, splits):
    """The workload's model, built exactly as the harness builds it from conf/model/*.yaml."""
    from harness.models import MLP, SmallCNN

    if job["kind"] == "mlp":
        return MLP(splits.input_shape, splits.num_classes, hidden=job["hidden"], dropout=0.1)
    return SmallCNN(splits.input_shape, splits.num_classes, channels=[32, 64])


def _optimizer(params):
    import torch

    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)


def _loaders(splits, device: str):
    """The CNN's train and val DataLoaders, as one would write them: 2 persistent workers, a seeded shuffle."""
    import torch
    from torch.utils.data import DataLoader

    common = dict(batch_size=BATCH, num_workers=CNN_WORKERS, persistent_workers=True, pin_memory=device == "cuda")
    train = DataLoader(splits.train, shuffle=True, generator=torch.Generator().manual_seed(0), **common)
    return train, DataLoader(splits.val, **common)


def _hand_batches(job: dict, splits, device):
    """Functions giving an epoch's training batches and the validation batches, on ``device``: for the MLPs
    the tensors live on the device and are shuffled there; for the CNN they come from DataLoaders."""
    import torch

    if job["kind"] == "mlp":
        x, y = (t.to(device) for t in splits.train.tensors)
        val = [tuple(t.to(device) for t in splits.val.tensors)]
        generator = torch.Generator().manual_seed(0)

        def train():
            order = torch.randperm(len(y), generator=generator).to(device)
            for i in range(0, len(y), BATCH):
                yield x[order[i : i + BATCH]], y[order[i : i + BATCH]]

        return train, lambda: val
    train_loader, val_loader = _loaders(splits, job["device"])

    def on_device(loader):
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return lambda: on_device(train_loader), lambda: on_device(val_loader)


def _validate(model, batches) -> tuple[float, float]:
    """Mean validation loss and accuracy (what the harness reports after every epoch)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            loss_sum = loss_sum + F.cross_entropy(logits, y, reduction="sum")
            correct = correct + (logits.argmax(1) == y).sum()
            seen += len(y)
    return float(loss_sum) / seen, int(correct) / seen


def worker_hand(job: dict, save_every_epoch: bool = False) -> dict:
    """The minimal loop written by hand for the job; with ``save_every_epoch``, also a plain ``torch.save``
    of the model and optimizer after every epoch."""
    import torch
    import torch.nn.functional as F

    from harness.schedulers import CosineWarmupScheduler

    marks = _record_steps()
    torch.manual_seed(0)
    device = torch.device(job["device"])
    splits = _splits(job)
    train_batches, val_batches = _hand_batches(job, splits, device)
    model = _model(job, splits).to(device)
    optimizer = _optimizer(model.parameters())
    scheduler = CosineWarmupScheduler(optimizer, job["warmup"], job["epochs"], MIN_LR)
    with tempfile.TemporaryDirectory(dir=job["tmp"]) as tmp:
        for epoch in range(job["epochs"]):
            model.train()
            for x, y in train_batches():
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            val_loss, val_acc = _validate(model, val_batches())
            scheduler.step()
            if save_every_epoch:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1},
                           f"{tmp}/ckpt.pt")
        final_loss = loss.item()
        end = time.time()
    return {**_result(marks, end, job), "final_loss": final_loss, "val_loss": val_loss, "val_acc": val_acc}


class _Terminal:
    """A stderr that says it is a terminal, so the progress bar is drawn as a user would see it, into
    /dev/null; it keeps the last few kB written, to show if the run fails."""

    def __init__(self) -> None:
        self._sink = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the worker process)
        self.tail = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.tail = (self.tail + text)[-4000:]
        return self._sink.write(text)

    def __getattr__(self, name):
        return getattr(self._sink, name)


def harness_overrides(job: dict, run_dir: str) -> list[str]:
    """The `python train.py` command line that runs the job."""
    common = [f"trainer.max_epochs={job['epochs']}", f"scheduler.warmup_epochs={job['warmup']}",
              "scheduler.interval=epoch",  # as the hand loop steps it
              f"optimizer.lr={LR}", f"data.batch_size={BATCH}", f"trainer.device={job['device']}",
              "trainer.test_at_end=false",  # the hand loop has no test split to evaluate
              f"hydra.run.dir={run_dir}"]
    if job["kind"] == "mlp":
        return [f"model.hidden=[{','.join(map(str, job['hidden']))}]", *common]
    return ["model=cnn", "data=fake", f"data.train_size={job['train_size']}", f"data.val_size={job['val_size']}",
            f"data.image_size=[{','.join(map(str, CNN_SHAPE))}]", f"data.num_classes={CNN_CLASSES}",
            f"data.num_workers={CNN_WORKERS}", "data.on_device=false", *common]


def worker_harness(job: dict, extra: tuple[str, ...] = ()) -> dict:
    """`python train.py` with the job's overrides (and ``extra`` ones), run in this process so the step hook
    sees its steps."""
    import runpy

    marks = _record_steps()
    stderr, sys.stderr = sys.stderr, _Terminal()
    with tempfile.TemporaryDirectory(dir=job["tmp"]) as tmp:
        sys.argv = [str(ROOT / "train.py"), *harness_overrides(job, f"{tmp}/run"), *extra]
        try:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        except SystemExit as e:
            if e.code:
                stderr.write(sys.stderr.tail)
                raise
        except BaseException:
            stderr.write(sys.stderr.tail)
            raise
        end = time.time()
    return _result(marks, end, job)


def _lightning_module(job: dict, splits):
    """The job as a LightningModule: the same model, optimizer and schedule, validation logged per epoch."""
    import lightning as L
    import torch.nn.functional as F

    from harness.schedulers import CosineWarmupScheduler

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _model(job, splits)

        def training_step(self, batch, _):
            loss = F.cross_entropy(self.model(batch[0]), batch[1])
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, _):
            logits = self.model(batch[0])
            self.log("val/loss", F.cross_entropy(logits, batch[1]))
            self.log("val/acc", (logits.argmax(1) == batch[1]).float().mean())

        def configure_optimizers(self):
            optimizer = _optimizer(self.parameters())
            return [optimizer], [CosineWarmupScheduler(optimizer, job["warmup"], job["epochs"], MIN_LR)]

    return Module()


def worker_lightning(job: dict) -> dict:
    """Lightning's Trainer at its defaults (TensorBoard logger if installed, progress bar, checkpointing)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    marks = _record_steps()
    torch.manual_seed(0)
    splits = _splits(job)
    if job["kind"] == "mlp":  # Lightning has no on-device loader: plain DataLoaders over the tensors
        train = DataLoader(splits.train, batch_size=BATCH, shuffle=True)
        val = DataLoader(splits.val, batch_size=1024)
    else:
        train, val = _loaders(splits, job["device"])
    with tempfile.TemporaryDirectory(dir=job["tmp"]) as tmp:
        trainer = L.Trainer(max_epochs=job["epochs"], accelerator=job["device"], devices=1, default_root_dir=tmp,
                            enable_model_summary=False)
        trainer.fit(_lightning_module(job, splits), train, val)
        end = time.time()
    return _result(marks, end, job)


WORKERS = {
    HAND: worker_hand,
    "hand loop + torch.save": lambda job: worker_hand(job, save_every_epoch=True),
    "harness": worker_harness,
    # last.pt at the end (and best.pt on new bests) instead of after every epoch: the loop's own cost
    "harness, last.pt at the end": lambda job: worker_harness(job, ("trainer.checkpoint_every_n_epochs=0",)),
    "lightning": worker_lightning,
}


# --- the driver: rounds of fresh processes, paired ratios, the table --------------------------------------

def plan(workload: str, args: argparse.Namespace) -> dict:
    """A workload's job, as the workers get it: epochs (from --steps for the MLPs, --cnn-epochs for the
    CNN), warmup epochs (3, but fewer than the epochs: the schedule needs warmup < total), sizes, device."""
    job = {**WORKLOADS[workload][1], "device": args.device, "tmp": args.tmp_dir}
    if job["kind"] == "mlp":
        job["epochs"] = max(WARMUP + 1, math.ceil(args.steps / math.ceil(DIGITS_TRAIN / BATCH)))
    else:
        job.update(epochs=args.cnn_epochs, train_size=args.cnn_train_size, val_size=args.cnn_val_size)
    job["warmup"] = min(WARMUP, job["epochs"] - 1)
    return job


def spawn(contender: str, job: dict) -> dict:
    """Runs one contender on one job in a fresh Python process and returns what the worker reported."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        job = {**job, "t0": time.time()}
        args = [sys.executable, __file__, "--worker", contender, "--job", json.dumps(job), "--result", str(out)]
        result = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            raise RuntimeError(f"{contender} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        return json.loads(out.read_text())


def run_rounds(workload: str, job: dict, contenders: list[str], repeats: int) -> dict[str, list[dict]]:
    """``repeats`` rounds of every contender on the job, interleaved; progress goes to stderr."""
    runs = {c: [] for c in contenders}
    for round_ in range(repeats):
        for contender in contenders:
            print(f"[{workload}] round {round_ + 1}/{repeats}: {contender}", file=sys.stderr, flush=True)
            runs[contender].append(spawn(contender, job))
    return runs


def _steps_per_s(run: dict) -> float:
    return run["steps"] / run["seconds"]


def summarise(runs: dict[str, list[dict]], epochs: int) -> dict[str, dict]:
    """Per contender, medians over the rounds: steps/s, the paired ratio to the hand loop and what it means
    as overhead per step and per epoch, start-up and its paired difference to the hand loop's, memory; and
    the epoch time those steps/s give."""
    hand = runs[HAND]
    hand_step_s = statistics.median(1 / _steps_per_s(r) for r in hand)
    steps_per_epoch = hand[0]["steps"] / epochs
    rows = {}
    for contender, rs in runs.items():
        pairs = list(zip(rs, hand))
        ratio = statistics.median(_steps_per_s(r) / _steps_per_s(h) for r, h in pairs)
        steps_per_s = statistics.median(_steps_per_s(r) for r in rs)
        overhead_us = (1 / ratio - 1) * hand_step_s * 1e6
        row = {"steps_per_s": steps_per_s, "vs_hand": ratio, "overhead_us_per_step": overhead_us,
               "overhead_ms_per_epoch": overhead_us * steps_per_epoch / 1000,
               "startup_s": statistics.median(r["startup_s"] for r in rs),
               "startup_vs_hand_s": statistics.median(r["startup_s"] - h["startup_s"] for r, h in pairs),
               "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
               "epoch_s": steps_per_epoch / steps_per_s}
        if "peak_cuda_mb" in rs[0]:
            row["peak_cuda_mb"] = statistics.median(r["peak_cuda_mb"] for r in rs)
        rows[contender] = row
    return rows


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


COLUMNS = [  # (heading, key of summarise()'s rows, format)
    ("steps/s", "steps_per_s", _rate), ("vs hand", "vs_hand", "{:.3f}".format),
    ("overhead µs/step", "overhead_us_per_step", "{:+.1f}".format),
    ("overhead ms/epoch", "overhead_ms_per_epoch", "{:+.2f}".format), ("start-up s", "startup_s", "{:.2f}".format),
    ("start-up vs hand s", "startup_vs_hand_s", "{:+.2f}".format), ("peak RSS MB", "peak_rss_mb", "{:.0f}".format),
    ("peak CUDA MB", "peak_cuda_mb", "{:.0f}".format),
]


def print_table_head(cuda: bool) -> None:
    """The Markdown table's heading (the CUDA column only with --device cuda)."""
    names = ["workload", "contender", *(name for name, key, _ in COLUMNS if cuda or key != "peak_cuda_mb")]
    print("| " + " | ".join(names) + " |")
    print("|" + "|".join(["---", "---"] + ["---:"] * (len(names) - 2)) + "|", flush=True)


def print_rows(workload: str, rows: dict[str, dict]) -> None:
    """The workload's rows of the Markdown table."""
    for contender, row in rows.items():
        cells = [fmt(row[key]) for _, key, fmt in COLUMNS if key in row]
        print("| " + " | ".join([workload, contender, *cells]) + " |", flush=True)


def import_torch_seconds() -> float:
    """Wall time of a bare `python -c 'import torch'`: the floor under every start-up figure."""
    start = time.time()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.time() - start


# --- the checkpoint measurement -----------------------------------------------------------------------------

def resnet18_state(device: str) -> dict:
    """A realistic checkpoint's state: torchvision resnet18 (10 classes) and its SGD optimizer after one step,
    so the momentum buffers exist."""
    import torch
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    model(torch.randn(2, 3, 32, 32, device=device)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}


def measure_checkpoint(device: str, repeats: int, tmp_dir: str | None) -> tuple[float, float]:
    """Median seconds of ``harness.checkpoint.save_atomic`` (temp file, fsync, rename, directory fsync) of
    :func:`resnet18_state` into a temporary directory, and the file's size in MB."""
    from harness.checkpoint import save_atomic

    state = resnet18_state(device)
    times = []
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        path = Path(tmp) / "last.pt"
        for _ in range(repeats):
            start = time.perf_counter()
            save_atomic(state, path)
            times.append(time.perf_counter() - start)
        size_mb = path.stat().st_size / 2**20
    return statistics.median(times), size_mb


def print_checkpoint(save_s: float, size_mb: float, repeats: int, epoch_s: float | None) -> None:
    """The checkpoint lines: size, save time, its share of this run's SmallCNN harness epoch and of a 10 s
    epoch, and whether it is under the 2% bar."""
    print(f"- checkpoint: resnet18 (10 classes) + SGD momentum state, {size_mb:.1f} MB; "
          f"harness.checkpoint.save_atomic, median of {repeats}: {save_s * 1000:.0f} ms")
    shares = {"a 10 s epoch": save_s / 10}
    if epoch_s:
        shares = {f"this run's SmallCNN harness epoch ({epoch_s:.2f} s)": save_s / epoch_s, **shares}
    print("- checkpoint share: " + ", ".join(f"{share:.2%} of {what}" for what, share in shares.items()))
    verdicts = {what: "under" if share < BAR else "over" for what, share in shares.items()}
    if len(set(verdicts.values())) == 1:
        verdict = f"{next(iter(verdicts.values()))} the {BAR:.0%} bar"
    else:
        verdict = "; ".join(f"{v} the {BAR:.0%} bar for {what}" for what, v in verdicts.items())
    print(f"- checkpoint verdict: a synchronous save is {verdict}")


# --- the command line -----------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--steps", type=int, default=3000, help="optimizer steps of the MLP runs (rounded up to whole epochs)")
    add("--cnn-epochs", type=int, default=3, help="epochs of the SmallCNN runs")
    add("--cnn-train-size", type=int, default=2048, help="FakeData training images of the SmallCNN runs")
    add("--cnn-val-size", type=int, default=1000, help="FakeData validation images of the SmallCNN runs")
    add("--device", default="cpu", choices=["cpu", "cuda"])
    add("--repeats", type=int, default=7, help="rounds: runs per contender and workload, interleaved")
    add("--no-checkpoint", action="store_true", help="skip the checkpoint measurement")
    add("--checkpoint-repeats", type=int, default=5, help="saves of the checkpoint measurement (median)")
    add("--tmp-dir", default=None, help="where runs and checkpoints write (default: the system's temp dir)")
    add("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    add("--contenders", default=None, help="comma-separated contenders (default: all there are)")
    for hidden in ("--worker", "--job", "--result"):
        add(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cnn_epochs < 1 or args.steps < 1 or args.repeats < 1 or args.checkpoint_repeats < 1:
        parser.error("--steps, --cnn-epochs, --repeats and --checkpoint-repeats must be at least 1")
    args.workloads = args.workloads.split(",")
    if not set(args.workloads) <= set(WORKLOADS):
        parser.error(f"--workloads={','.join(args.workloads)}: choose from {', '.join(WORKLOADS)}")
    if args.contenders is not None:
        args.contenders = args.contenders.split(",")
        if HAND not in args.contenders or not set(args.contenders) <= set(WORKERS):
            parser.error(f"--contenders must include {HAND!r} (the reference) and name only {', '.join(WORKERS)}")
    return args


def contenders() -> list[str]:
    """The contenders: Lightning's row only where it is installed."""
    names = [HAND, "hand loop + torch.save", "harness", "harness, last.pt at the end"]
    if importlib.util.find_spec("lightning") is None:
        print("(lightning not installed: pip install -e '.[bench]' to compare against it)\n")
        return names
    return [*names, "lightning"]


def main() -> None:
    args = parse_args()
    if args.worker:
        result = WORKERS[args.worker](json.loads(args.job))
        Path(args.result).write_text(json.dumps(result))
        return
    import torch

    names = args.contenders or contenders()
    print(f"machine: {platform.machine()} ({platform.processor() or platform.system()}), {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, device {args.device}, MLPs {args.steps} steps, SmallCNN {args.cnn_epochs} "
          f"epochs of {args.cnn_train_size} images (+{args.cnn_val_size} val), batch {BATCH}, "
          f"{args.repeats} rounds\n")
    baseline = min(import_torch_seconds() for _ in range(min(args.repeats, 3)))
    print(f"`python -c 'import torch'`: {baseline:.2f} s\n")
    print_table_head(args.device == "cuda")
    cnn_epoch_s = None
    for workload in args.workloads:
        job, label = plan(workload, args), WORKLOADS[workload][0]
        rows = summarise(run_rounds(label, job, names, args.repeats), job["epochs"])
        print_rows(label, rows)
        if job["kind"] == "cnn":
            cnn_epoch_s = rows["harness"]["epoch_s"]
    if not args.no_checkpoint:
        print()
        save_s, size_mb = measure_checkpoint(args.device, args.checkpoint_repeats, args.tmp_dir)
        print_checkpoint(save_s, size_mb, args.checkpoint_repeats, cnn_epoch_s)


if __name__ == "__main__":
    main()
