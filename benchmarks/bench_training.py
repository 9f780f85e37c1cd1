"""Training-loop overhead of ElasticTraining: step-peak memory and step time of a sandwich step.

Two ratios, measured side by side in one run through Lightning's real ``Trainer``:

* **memory**: step-peak memory (peak minus the memory live before the step) of a sandwich step (max + 2 random + min,
  in-place KD) ÷ a plain max-subnet step (the unconverted model, no callback). Target <= 1.10.
* **time**: median sandwich step time ÷ the sum of the four same subnets' median standalone steps (each exported to a
  plain timm model and trained by a plain Trainer). Target <= 1.03.

How memory is measured on CPU (``torch.cpu`` has no ``max_memory_allocated``): a ``TorchDispatchMode`` sees every
tensor op of the step, forward *and* backward (CPU autograd runs on the calling thread), registers each new output
storage once and decrements the live count when the storage is freed (``weakref.finalize``; PyTorch keeps one Python
object per storage). The peak of the live bytes is exactly what a caching-free allocator would need, like CUDA's
``max_memory_allocated() - memory_allocated()``, with no allocator-cache or RSS noise. Grads start as None
(``zero_grad(set_to_none=True)``) in both runs, so both peaks include the gradient tensors.

Run:  .venv/bin/python benchmarks/bench_training.py            (about 2-3 minutes on 2 shared CPU cores)
"""

from __future__ import annotations

import argparse
import copy
import statistics
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
    """Times every training step; measures step-peak memory of step ``memory_step`` when set."""

    def __init__(self, memory_step: int | None = None) -> None:
        self.times: list[float] = []
        self.memory_step = memory_step
        self.peak: int | None = None
        self._mode: LiveBytes | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.memory_step:
            self._mode = LiveBytes()
            self._mode.__enter__()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t)
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.peak, self._mode = self._mode.peak, None


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
    parser.add_argument("--steps", type=int, default=8, help="steps per fit (the first 2 are warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats; medians over all")
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

    sandwich_t, static_t = [], {tag: [] for tag, _ in subnets}
    for _ in range(args.rounds):
        probe = StepProbe()
        fit(Lit(new_model()), [elastic(), probe], loader, args.steps)
        sandwich_t += probe.times[2:]
        for tag, cfg in subnets:
            exported = to_supernet(new_model(), SPACE).export(cfg)
            probe = StepProbe()
            fit(Lit(copy.deepcopy(exported)), [probe], loader, args.steps)
            static_t[tag] += probe.times[2:]

    mem_sandwich, mem_plain = StepProbe(memory_step=2), StepProbe(memory_step=2)
    fit(Lit(new_model()), [elastic(), mem_sandwich], loader, 3)
    fit(Lit(new_model()), [mem_plain], loader, 3)

    static_sum = sum(statistics.median(v) for v in static_t.values())
    sandwich = statistics.median(sandwich_t)
    print(f"model {args.model}, {args.size}px, batch {args.batch}, {args.threads} thread(s), "
          f"{args.rounds}x{args.steps - 2} timed steps per setting")
    print("| measure | value |\n|---|---|")
    for tag, v in static_t.items():
        print(f"| standalone {tag} step (median) | {statistics.median(v) * 1e3:.1f} ms |")
    print(f"| sum of the 4 standalone steps | {static_sum * 1e3:.1f} ms |")
    print(f"| sandwich step (max + 2 random + min, in-place KD) | {sandwich * 1e3:.1f} ms |")
    print(f"| **time ratio** sandwich / sum (target <= 1.03) | **{sandwich / static_sum:.3f}** |")
    print(f"| plain max-subnet step peak | {mem_plain.peak / 2**20:.1f} MiB |")
    print(f"| sandwich step peak | {mem_sandwich.peak / 2**20:.1f} MiB |")
    print(f"| **memory ratio** sandwich / plain max (target <= 1.10) | **{mem_sandwich.peak / mem_plain.peak:.3f}** |")


if __name__ == "__main__":
    main()
