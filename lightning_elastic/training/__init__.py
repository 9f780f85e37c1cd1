"""Training: samplers, distillation, the ElasticTraining callback and the ElasticModule wrapper."""
