"""Crash-and-resume: a run killed mid-epoch and resumed from its last (mid-epoch) checkpoint equals an uninterrupted
run, subnet by subnet, batch by batch and weight by weight.

Validation (with per-subnet BatchNorm recalibration on train batches) runs mid-epoch too, before the checkpoint the
run resumes from: recalibrating must not disturb the live training loader's position.
"""

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_elastic import ElasticTraining, SearchSpaceConfig
from tests.training._lit import LitClassifier, loader, tiny_data, trainer

SPACE = SearchSpaceConfig(width=(0.5, 0.75, 1.0))
STEPS_PER_EPOCH = 6
CRASH_AT = STEPS_PER_EPOCH + 4  # ends batch 3 of epoch 1, before that batch's validation


class ResumableLoader(DataLoader):
    """A DataLoader with Lightning's ``state_dict``/``load_state_dict`` interface (what torchdata's
    ``StatefulDataLoader`` provides): a mid-epoch checkpoint remembers how many batches this epoch already served,
    and the resumed epoch skips them. Without it Lightning restarts the epoch's data and warns."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.served, self._skip = 0, 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self.served = skip
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                self.served += 1
                yield batch

    def state_dict(self) -> dict:
        return {"served": self.served}

    def load_state_dict(self, state: dict) -> None:
        self._skip = state["served"] if state["served"] < len(self) else 0


class Recorder(Callback):
    """Records each optimizer step's subnets and batch, and crashes on purpose at ``crash_at``."""

    def __init__(self, elastic: ElasticTraining, crash_at: int | None = None) -> None:
        self.elastic, self.crash_at, self.seen = elastic, crash_at, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen[trainer.global_step] = (self.elastic.subnets_for_step(trainer), batch[0].sum().item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.crash_at:  # runs before ModelCheckpoint (Lightning puts it last)
            raise RuntimeError("crash on purpose")


def run(tmp_path, crash_at=None, ckpt_path=None):
    torch.manual_seed(0)
    module = LitClassifier()
    elastic = ElasticTraining(SPACE, seed=3, bn_calibration_batches=1)
    recorder = Recorder(elastic, crash_at)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    tr = trainer(max_epochs=3, callbacks=[elastic, recorder, ckpt], enable_checkpointing=True,
                 default_root_dir=tmp_path, val_check_interval=2)  # validation after batches 1, 3, 5
    train = ResumableLoader(tiny_data(8 * STEPS_PER_EPOCH), batch_size=8, shuffle=False)
    tr.fit(module, train, loader(8), ckpt_path=ckpt_path)
    return module, recorder.seen, elastic


@pytest.mark.slow
def test_crash_mid_epoch_and_resume_matches_uninterrupted(tmp_path):
    reference, ref_seen, ref_elastic = run(tmp_path / "ref")
    with pytest.raises(RuntimeError, match="crash on purpose"):
        run(tmp_path / "crash", crash_at=CRASH_AT)
    last = tmp_path / "crash" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == CRASH_AT - 1  # mid epoch 1, after a validation
    resumed, seen, elastic = run(tmp_path / "crash", ckpt_path=str(last))
    assert sorted(seen) == list(range(CRASH_AT - 1, 3 * STEPS_PER_EPOCH))
    assert all(seen[k] == ref_seen[k] for k in seen)  # the same subnets on the same batch, step by step
    assert elastic.state_dict() == ref_elastic.state_dict()  # counters continued from the checkpoint
    ref_state, state = reference.state_dict(), resumed.state_dict()
    for k in ref_state:  # weights and BatchNorm statistics
        torch.testing.assert_close(state[k], ref_state[k], rtol=0, atol=1e-6, msg=k)
