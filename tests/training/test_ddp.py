"""DDP on 2 CPU processes (``ddp_spawn``; ``ddp`` would re-launch the pytest session): after one sandwich step the
gradients equal a single process's on the concatenated batch, to ``rtol=1e-5, atol=1e-6`` (float32 rounding of a
two-way mean vs a mean over 16), and no rank hangs on parameters elastic depth leaves unused."""

import socket

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, DistributedSampler

from lightning_elastic import ElasticTraining, SearchSpaceConfig
from lightning_elastic.training.samplers import Sampler
from tests._models import TinyMLPAdapter
from tests.training._lit import trainer
from tests.training.test_callback import MLPModule, mlp_loader

SPACE = SearchSpaceConfig(width=(0.25, 0.5, 1.0), depth=(1, 2, 3))


class SaveFirstGrads(Callback):
    def __init__(self, path):
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0 and trainer.is_global_zero:
            torch.save({n: p.grad.clone() for n, p in pl_module.named_parameters()}, self.path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ShardedMLPModule(MLPModule):
    """Rank r gets samples r, r+2, …: the ranks' first batches together are the single process's first batch."""

    def train_dataloader(self):
        data = mlp_loader(n=32).dataset
        sampler = DistributedSampler(data, num_replicas=self.trainer.world_size, rank=self.global_rank, shuffle=False)
        return DataLoader(data, batch_size=8, sampler=sampler)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_grads_equal_single_process_on_concatenated_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    # 4 optimizer steps: elastic depth leaves blocks unused on some steps, and no rank may hang on them
    elastic = ElasticTraining(SPACE, adapter=TinyMLPAdapter(), seed=1, validate_subnets=None)
    trainer(callbacks=[elastic, SaveFirstGrads(tmp_path / "ddp.pt")], strategy="ddp_spawn", devices=2, max_steps=4,
            use_distributed_sampler=False).fit(ShardedMLPModule())
    single = MLPModule()
    elastic = ElasticTraining(SPACE, adapter=TinyMLPAdapter(), seed=1, validate_subnets=None)
    trainer(callbacks=[elastic, SaveFirstGrads(tmp_path / "one.pt")], max_steps=1).fit(
        single, mlp_loader(n=32, batch_size=16))
    ddp, one = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    assert set(ddp) == set(one)
    for name in one:  # DDP averages the two ranks' means: the mean over all 16 samples, up to float rounding
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-5, atol=1e-6, msg=name)


class MinOnly(Sampler):
    """Trains only the min subnet (depth 1): blocks 1 and 2 are used by no subnet of any step."""

    name = "min-only"

    def sample(self, space, ctx, generator):
        return [("min", space.min_config())]


class AdamWModule(ShardedMLPModule):
    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.5)


class SaveParams(Callback):
    def __init__(self, path):
        self.path = path

    def on_train_start(self, trainer, pl_module):  # after conversion, which reorders channels
        self.start = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            end = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            torch.save({"start": self.start, "end": end}, self.path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_leaves_parameters_no_subnet_used_alone_as_one_device_does(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    elastic = ElasticTraining(SPACE, adapter=TinyMLPAdapter(), sampler=MinOnly(), distill=None, validate_subnets=None)
    trainer(callbacks=[elastic, SaveParams(tmp_path / "ddp.pt")], strategy="ddp_spawn", devices=2, max_steps=2,
            use_distributed_sampler=False).fit(AdamWModule())
    elastic = ElasticTraining(SPACE, adapter=TinyMLPAdapter(), sampler=MinOnly(), distill=None, validate_subnets=None)
    single = AdamWModule()
    single.train_dataloader = lambda: mlp_loader(n=32, batch_size=16)
    trainer(callbacks=[elastic, SaveParams(tmp_path / "one.pt")], max_steps=2).fit(single)
    ddp, one = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    start, one, ddp = one["start"], one["end"], ddp["end"]
    skipped = [n for n in one if n.startswith(("net.blocks.1.", "net.blocks.2."))]
    assert skipped and all(torch.equal(one[n], start[n]) for n in skipped)  # one device: no grad, no decay
    assert not torch.equal(one["net.stem.weight"], start["net.stem.weight"])
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
