"""Built-in LightningModules used by the recipes (swap in your own ``class_path`` any time)."""

from lightning_elastic.modules.image import HFImageClassifier, ImageClassifier
from lightning_elastic.modules.text import CausalLM, SequenceClassifier

__all__ = ["CausalLM", "HFImageClassifier", "ImageClassifier", "SequenceClassifier"]
