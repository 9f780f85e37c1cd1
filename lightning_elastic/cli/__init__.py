"""The ``lightning-elastic`` command line (LightningCLI with ``search`` and ``export``)."""

from lightning_elastic.cli.main import ElasticCLI, ElasticTrainer, main

__all__ = ["ElasticCLI", "ElasticTrainer", "main"]
