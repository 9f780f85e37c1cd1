"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace, in a fresh folder. Where a block is a template that names the
user's own objects (``MyLitModule``, ``dm``, ``module``, ``cfg``, ``train_loader``), :data:`PREAMBLE` defines small
real ones; nothing is monkeypatched. Where a block's budget is a real run's (epochs, evaluations), :data:`BUDGET`
shrinks it by replacing exact text, and the test fails if that text is gone (so the table stays in step with the
docs). A block that cannot run carries ``<!-- snippet: skip <reason> -->`` on the line before its fence.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)```", re.S)
SKIP = re.compile(r"<!--\s*snippet:\s*skip\b\s*(?P<reason>.*?)-->")

PREAMBLE = '''
import lightning as L
import timm
import torch
import torch.nn.functional as F
import torchmetrics
from torch.utils.data import DataLoader, Subset

from lightning_elastic import to_supernet
from lightning_elastic.data import DigitsDataModule


class MyLitModule(L.LightningModule):
    """A user's LightningModule: a backbone, cross-entropy, accuracy logged as val_acc."""

    def __init__(self, backbone: torch.nn.Module, lr: float = 2e-3) -> None:
        super().__init__()
        self.model = backbone
        self.lr = lr
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=backbone.num_classes)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class SmallDigits(DigitsDataModule):
    """The digits datamodule on 64 validation images: the user's `dm`, sized for a test."""

    def val_dataloader(self):
        return DataLoader(Subset(self._splits["val"], range(64)), batch_size=self.batch_size)


dm = SmallDigits(image_size=32, batch_size=32)
train_loader = [torch.randn(4, 3, 64, 64) for _ in range(2)]
module = MyLitModule(backbone=timm.create_model("resnet10t", num_classes=10))
cfg = to_supernet(module.model).space.min_config()
'''

#: (file, exact text) -> replacement: a real run's budget, shrunk for the test
BUDGET = {
    ("README.md", "L.Trainer(max_epochs=3, callbacks=["):
        "L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_progress_bar=False,"
        " enable_checkpointing=False, enable_model_summary=False, callbacks=[",
    ("README.md", "num_evals=30, export_top=3)"):
        "num_evals=3, export_top=1, initial=2, rounds=1, predictor_trials=10, latency_min_run_time=0.01,"
        " bn_calibration_batches=1, progress=False)",
}


def blocks(name: str) -> list[tuple[str, str | None]]:
    """``[(code, skip reason or None)]`` of one markdown file."""
    text = (ROOT / name).read_text()
    out = []
    for m in FENCE.finditer("\n" + text):
        skip = SKIP.search(m["before"])
        out.append((m["code"], skip["reason"].strip() or "no reason given" if skip else None))
    return out


def test_snippet_files_are_found():
    assert "README.md" in FILES and "docs/concepts.md" in FILES
    assert len(blocks("README.md")) >= 2
    for (name, text) in BUDGET:  # every shrunk text still exists
        assert any(text in code for code, _ in blocks(name)), (name, text)


@pytest.mark.parametrize("name", [f for f in FILES if blocks(f)])
def test_python_snippets_run(name, tmp_path, monkeypatch):
    from lightning_elastic.adapters.registry import registered_adapters, unregister_adapter

    monkeypatch.chdir(tmp_path)  # snippets write folders (mbv3_min/, lightning_logs/, ...) where they run
    before = set(registered_adapters())
    namespace: dict = {"__name__": f"snippet_{Path(name).stem}"}
    try:
        exec(compile(PREAMBLE, "<preamble>", "exec"), namespace)
        for i, (code, skip) in enumerate(blocks(name)):
            if skip is not None:
                assert skip != "no reason given", f"{name} block {i}: a skipped snippet must say why"
                continue
            for (file, text), replacement in BUDGET.items():
                if file == name:
                    code = code.replace(text, replacement)
            exec(compile(code, f"{name} block {i}", "exec"), namespace)
    finally:
        for extra in set(registered_adapters()) - before:  # an adapter a snippet registered
            unregister_adapter(extra)


def test_every_test_cited_in_bad_inputs_exists():
    """docs/bad_inputs.md names a test for every bad input; a renamed or deleted test must not leave a stale row."""
    cited, missing = 0, []
    for line in (ROOT / "docs" / "bad_inputs.md").read_text().splitlines():
        if not line.startswith("|"):
            continue
        current = None
        for match in re.finditer(r"`([\w/]+\.py)?::(\w+)", line.rstrip("|").split("|")[-1]):
            current = match.group(1) or current
            path = ROOT / "tests" / (current or "")
            cited += 1
            if current is None or not path.is_file() or not re.search(rf"def {match.group(2)}\b", path.read_text()):
                missing.append(f"{current}::{match.group(2)}")
    assert cited > 100 and missing == []
