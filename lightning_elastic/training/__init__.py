"""Training: samplers, distillation, the ElasticTraining callback and the ElasticModule wrapper."""

from lightning_elastic.training.calibration import calibration_loader, recalibrated_bn
from lightning_elastic.training.callback import ElasticTraining
from lightning_elastic.training.distill import alpha_divergence, kl_divergence
from lightning_elastic.training.module import ElasticModule
from lightning_elastic.training.samplers import (
    DelayedShrinkingSampler,
    NestedSampler,
    Phase,
    ProgressiveShrinkingSampler,
    Sampler,
    SandwichSampler,
    StepContext,
    UniformSampler,
)

__all__ = [
    "DelayedShrinkingSampler",
    "ElasticModule",
    "ElasticTraining",
    "NestedSampler",
    "Phase",
    "ProgressiveShrinkingSampler",
    "Sampler",
    "SandwichSampler",
    "StepContext",
    "UniformSampler",
    "alpha_divergence",
    "calibration_loader",
    "kl_divergence",
    "recalibrated_bn",
]
