import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_elastic import ElasticTraining, SearchSpaceConfig
from tests.training._lit import LitClassifier, loader, trainer

SPACE = SearchSpaceConfig(width=(0.5, 0.75, 1.0))


class Recorder(Callback):
    """Records the subnets each optimizer step trains, and crashes on purpose at ``crash_at``."""

    def __init__(self, elastic: ElasticTraining, crash_at: int | None = None) -> None:
        self.elastic, self.crash_at, self.seen = elastic, crash_at, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen[trainer.global_step] = self.elastic.subnets_for_step(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.crash_at:
            raise RuntimeError("crash on purpose")


def run(tmp_path, crash_at=None, ckpt_path=None):
    torch.manual_seed(0)
    module = LitClassifier()
    elastic = ElasticTraining(SPACE, seed=3, bn_calibration_batches=2)
    recorder = Recorder(elastic, crash_at)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    tr = trainer(max_epochs=3, callbacks=[elastic, recorder, ckpt], enable_checkpointing=True,
                 default_root_dir=tmp_path)
    tr.fit(module, loader(32), loader(8), ckpt_path=ckpt_path)
    return module, recorder.seen


@pytest.mark.slow
def test_crash_mid_epoch_and_resume_matches_uninterrupted(tmp_path):
    reference, ref_seen = run(tmp_path / "ref")
    with pytest.raises(RuntimeError, match="crash on purpose"):
        run(tmp_path / "crash", crash_at=6)  # 4 steps per epoch: step 6 is mid epoch 1
    last = tmp_path / "crash" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    resumed, seen = run(tmp_path / "crash", ckpt_path=str(last))
    assert sorted(seen) == list(range(4, 12))
    assert all(seen[k] == ref_seen[k] for k in seen)  # the same subnets, step by step
    ref_state, state = reference.state_dict(), resumed.state_dict()
    for k in ref_state:
        torch.testing.assert_close(state[k], ref_state[k], rtol=0, atol=1e-6, msg=k)
