"""A short supernet fine-tune of the real MiniLM and SmolLM2-135M improves its children: each child's loss on the
training batches after a few steps of ``ElasticTraining`` is lower than before (no benchmark figures asserted; the
benchmarks measure held-out quality). Marked slow; run in CI."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_elastic import ElasticTraining, SearchSpaceConfig

pytestmark = pytest.mark.slow

REVIEWS = [("a warm , funny and moving film", 1), ("dull and far too long", 0), ("great fun from start to finish", 1),
           ("a tedious , flat mess", 0), ("the best thing this year", 1), ("boring and badly acted", 0),
           ("a charming , affecting journey", 1), ("unbearably bleak and desperate", 0)]
# plain English sentences in SmolLM2's vocabulary (tokenizing with the GGUF tokenizer would take ~15 s)
SENTENCES = [
    [504, 3947, 436, 4011, 284, 42585, 28, 588, 392, 14692, 2972, 284, 1012, 2905, 511, 11342, 30],
    [8113, 6572, 260, 5700, 288, 1303, 260, 3961, 5738, 1512, 618, 260, 1165, 9902, 30],
    [6101, 2109, 737, 8118, 28, 913, 284, 1123, 2763, 288, 1075, 1837, 284, 2458, 30],
    [504, 4445, 288, 260, 2240, 3711, 897, 5353, 429, 260, 1085, 5729, 30],
    [14433, 253, 725, 1789, 2933, 655, 28, 9369, 284, 253, 2341, 282, 2180, 30],
    [504, 1122, 4944, 13159, 281, 260, 5949, 1793, 357, 2841, 288, 5249, 30],
    [5425, 3743, 5192, 638, 260, 1911, 15834, 1670, 738, 260, 1248, 30],
    [504, 6508, 553, 253, 1507, 3854, 282, 9843, 429, 260, 1596, 1296, 5034, 30],
]


def pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


class ChildLosses(L.Callback):
    """Each named child's loss on fixed batches (eval mode, no grad) when training starts (the supernet exists then)
    and when it ends."""

    def __init__(self, elastic: ElasticTraining, batches: list[dict], children) -> None:
        self.elastic, self.batches, self.children = elastic, batches, children
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}

    @torch.no_grad()
    def _losses(self, pl_module) -> dict[str, float]:
        net, out = self.elastic.supernet, {}
        was_training = pl_module.training
        pl_module.eval()
        for tag, cfg in self.children(net).items():
            with net.subnet(cfg):
                out[tag] = sum(float(pl_module.model(**b).loss) for b in self.batches) / len(self.batches)
        pl_module.train(was_training)
        return out

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = self._losses(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.after = self._losses(pl_module)


def depth_children(net) -> dict[str, dict[str, int]]:
    """The max subnet, and for every depth choice the smallest child of that depth."""
    (depth,) = [d for d in net.space if d.name.endswith("depth")]
    children = {"max": net.max_config()}
    for choice in depth.choices:
        children[f"depth {choice}, narrowest"] = {**net.min_config(), depth.name: choice}
    return children


def fit(module: L.LightningModule, elastic: ElasticTraining, losses: ChildLosses, loader, steps: int) -> None:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[elastic, losses])
    trainer.fit(module, loader)


def test_minilm_supernet_fine_tune_improves_every_depth_child(minilm_path):
    from transformers import AutoTokenizer

    from lightning_elastic.modules import SequenceClassifier

    tok = AutoTokenizer.from_pretrained(minilm_path)
    batch = dict(tok([t for t, _ in REVIEWS], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([y for _, y in REVIEWS])
    module = SequenceClassifier(model_name_or_path=minilm_path, num_labels=2, lr=1e-4, scheduler="none")
    elastic = ElasticTraining(SearchSpaceConfig(depth="auto", heads=(0.5, 1.0), width=(0.5, 1.0)), num_random=1,
                              distill="inplace-kl", kd_weight=0.5)
    losses = ChildLosses(elastic, [batch], depth_children)
    fit(module, elastic, losses, DataLoader([batch], batch_size=None), steps=12)
    assert len(losses.before) == 4  # max and depths 3, 4, 6
    for tag, before in losses.before.items():
        assert losses.after[tag] < before - 0.05, (tag, before, losses.after[tag])


class PlainLM(L.LightningModule):
    """User code: an HF causal LM, nothing elastic in it."""

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr)


@pytest.mark.parametrize("mode", ["llama_nas", "lonas"])
def test_smollm2_supernet_fine_tune_improves_its_children(smollm2, mode):
    model = copy.deepcopy(smollm2).train()
    if mode == "lonas":  # frozen base, elastic LoRA ranks and base widths
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj",
                                                                                     "down_proj"]))
        space, lr = SearchSpaceConfig(rank=(4, 8), width=(0.5, 1.0), heads=None, depth=(0.8, 1.0)), 2e-3
    else:  # the whole network fine-tuned as a supernet
        space, lr = SearchSpaceConfig(width=(0.5, 1.0), heads=None, depth=(0.8, 1.0)), 1e-4
    batches = [pad(SENTENCES[:4], 2), pad(SENTENCES[4:], 2)]
    elastic = ElasticTraining(space, num_random=1, distill="inplace-kl", kd_weight=0.5, bn_calibration_batches=0)
    losses = ChildLosses(elastic, batches, depth_children)
    fit(PlainLM(model, lr), elastic, losses, DataLoader(batches, batch_size=None), steps=4)
    assert len(losses.before) == 3  # max and depths 24, 30
    for tag, before in losses.before.items():
        assert losses.after[tag] < before - 0.05, (tag, before, losses.after[tag])
