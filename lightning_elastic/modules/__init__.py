"""Built-in LightningModules used by the recipes (swap in your own ``class_path`` any time)."""

from lightning_elastic.modules.image import ImageClassifier
from lightning_elastic.modules.text import CausalLM, SequenceClassifier

__all__ = ["CausalLM", "ImageClassifier", "SequenceClassifier"]
