"""Training-loop overhead of ElasticTraining: step-peak memory and step time of a sandwich step.

Two ratios, measured side by side in one run through Lightning's real ``Trainer``:

* **memory**: step-peak memory (peak minus the memory live before the step) of a sandwich step (max + 2 random + min,
  in-place KD) ÷ a plain max-subnet step (the unconverted model, no callback). Target <= 1.10.
* **time**: sandwich step time ÷ the sum of the four same subnets' standalone steps (each exported to a plain timm
  model and trained by its own plain Trainer). Target <= 1.03.

How time is measured on a shared machine: the five fits (sandwich + four standalone) run in five threads that take
turns *one training step at a time* (a baton passed in ``on_train_batch_start``/``on_train_batch_end``; only the
holder computes), so every round of five steps sees the same machine load, and each round gives one paired ratio;
the figure is the median over rounds. Times are wall-clock and the stepping thread's CPU time (``time.thread_time``):
with one intra-op thread and no loader workers every op of a step, backward included (CPU autograd runs on the
calling thread), runs on that thread, so its CPU time leaves out time the OS gave to other processes.

How memory is measured on CPU (``torch.cpu`` has no ``max_memory_allocated``): a ``TorchDispatchMode`` sees every
tensor op of the step, forward *and* backward (CPU autograd runs on the calling thread), registers each new output
storage once and decrements the live count when the storage is freed (``weakref.finalize``; PyTorch keeps one Python
object per storage). The peak of the live bytes is exactly what a caching-free allocator would need, like CUDA's
``max_memory_allocated() - memory_allocated()``, with no allocator-cache or RSS noise. Grads start as None
(``zero_grad(set_to_none=True)``) in both runs, so both peaks include the gradient tensors.

Run:  .venv/bin/python benchmarks/bench_training.py            (about 2 minutes on 2 shared CPU cores)
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import weakref

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader, TensorDataset

from lightning_elastic import ElasticTraining, SearchSpaceConfig, to_supernet
from lightning_elastic.training.samplers import Sampler

SPACE = SearchSpaceConfig(width=(0.5, 0.75, 1.0), depth="auto")


class LiveBytes(TorchDispatchMode):
    """Peak of the bytes held by tensor storages created while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self._seen:
                    self._seen.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


class StepProbe(Callback):
    """Times every training step (wall and thread CPU); measures step-peak memory of step ``memory_step``."""

    def __init__(self, memory_step: int | None = None) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.memory_step = memory_step
        self.peak: int | None = None
        self._mode: LiveBytes | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.memory_step:
            self._mode = LiveBytes()
            self._mode.__enter__()
        self._t, self._cpu = time.perf_counter(), time.thread_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t)
        self.cpu_times.append(time.thread_time() - self._cpu)
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.peak, self._mode = self._mode.peak, None


class Baton:
    """Round-robin turns between the fits' threads: one training step each, in order."""

    def __init__(self, n: int) -> None:
        self.n, self.turn, self.failed = n, 0, False
        self.cond = threading.Condition()

    def wait(self, i: int) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.turn == i or self.failed, timeout=900) or self.failed:
                raise RuntimeError("another fit failed or stalled")

    def release(self, i: int) -> None:
        with self.cond:
            self.turn = (i + 1) % self.n
            self.cond.notify_all()

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()


class TakeTurn(Callback):
    """First callback of a fit: waits for this fit's turn before the step (and before its timer starts)."""

    def __init__(self, baton: Baton, i: int) -> None:
        self.baton, self.i = baton, i

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.baton.wait(self.i)


class PassTurn(Callback):
    """Last callback of a fit: passes the turn on after the step (and after its timer stopped)."""

    def __init__(self, baton: Baton, i: int) -> None:
        self.baton, self.i = baton, i

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.baton.release(self.i)


def fit_in_turns(jobs: list[tuple[L.LightningModule, list[Callback]]], loader, steps: int) -> None:
    """Runs the fits in threads, one step at a time, round robin (only the baton holder computes)."""
    baton, errors = Baton(len(jobs)), []

    def work(i: int, module: L.LightningModule, callbacks: list[Callback]) -> None:
        try:
            fit(module, [TakeTurn(baton, i), *callbacks, PassTurn(baton, i)], loader, steps)
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(err)
            baton.fail()

    threads = [threading.Thread(target=work, args=(i, m, cbs)) for i, (m, cbs) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class FixedSampler(Sampler):
    """The same subnets every step, so the sandwich step and the standalone steps train identical architectures."""

    name = "fixed"

    def __init__(self, subnets):
        self.fixed = subnets

    def sample(self, space, ctx, generator):
        return list(self.fixed)


class Lit(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def fit(module, callbacks, loader, steps):
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=22, help="steps per fit (the first 2 are warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)

    def new_model():
        torch.manual_seed(0)
        return timm.create_model(args.model, pretrained=False, num_classes=10)

    g = torch.Generator().manual_seed(0)
    n = args.batch * args.steps
    data = TensorDataset(torch.randn(n, 3, args.size, args.size, generator=g), torch.randint(10, (n,), generator=g))
    loader = DataLoader(data, batch_size=args.batch)

    net = to_supernet(new_model(), SPACE)
    subnets = [("max", net.max_config()), ("rand0", net.sample(g)), ("rand1", net.sample(g)), ("min", net.min_config())]

    def elastic():
        return ElasticTraining(SPACE, sampler=FixedSampler(subnets), distill="inplace-kl", validate_subnets=None)

    probes = {"sandwich": StepProbe(), **{tag: StepProbe() for tag, _ in subnets}}
    jobs = [(Lit(new_model()), [elastic(), probes["sandwich"]])]
    for tag, cfg in subnets:
        jobs.append((Lit(to_supernet(new_model(), SPACE).export(cfg)), [probes[tag]]))
    fit_in_turns(jobs, loader, args.steps)

    mem_sandwich, mem_plain = StepProbe(memory_step=2), StepProbe(memory_step=2)
    fit(Lit(new_model()), [elastic(), mem_sandwich], loader, 3)
    fit(Lit(new_model()), [mem_plain], loader, 3)

    warm = 2
    timed = args.steps - warm
    print(f"model {args.model}, {args.size}px, batch {args.batch}, {args.threads} thread(s), "
          f"{timed} rounds of 5 turn-taking steps (after {warm} warm-up rounds)")
    print("| measure (median over rounds) | wall-clock | stepping thread's CPU time |\n|---|---|---|")
    series = {kind: {name: getattr(p, attr)[warm:] for name, p in probes.items()}
              for kind, attr in (("wall", "times"), ("cpu", "cpu_times"))}
    for name in probes:
        label = "sandwich step (max + 2 random + min, in-place KD)" if name == "sandwich" else f"standalone {name} step"
        print(f"| {label} | {statistics.median(series['wall'][name]) * 1e3:.1f} ms | "
              f"{statistics.median(series['cpu'][name]) * 1e3:.1f} ms |")
    ratio = {}
    for kind, per in series.items():
        sums = [sum(per[tag][k] for tag, _ in subnets) for k in range(timed)]
        print(f"| sum of the 4 standalone steps ({kind}) | {statistics.median(sums) * 1e3:.1f} ms | |")
        ratio[kind] = statistics.median(per["sandwich"][k] / sums[k] for k in range(timed))
    print(f"| **time ratio** sandwich / sum, paired per round (target <= 1.03) | **{ratio['wall']:.3f}** | "
          f"**{ratio['cpu']:.3f}** |")
    print("\n| memory (step peak minus memory live before the step) | value |\n|---|---|")
    print(f"| plain max-subnet step peak | {mem_plain.peak / 2**20:.2f} MiB |")
    print(f"| sandwich step peak | {mem_sandwich.peak / 2**20:.2f} MiB |")
    print(f"| **memory ratio** sandwich / plain max (target <= 1.10) | **{mem_sandwich.peak / mem_plain.peak:.3f}** |")


if __name__ == "__main__":
    main()
