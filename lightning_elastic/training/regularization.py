"""Turn dropout-like regularisation off for some subnets and back on exactly (BigNAS: regularise the max only).

BigNAS (Yu et al., 2020, sec. 3.1 "Regularization: only for the biggest child") found that dropout, drop-path and
weight decay on the small children make them underfit: the small ones need capacity, not regularisation, while the
biggest child overfits without it. ``ElasticTraining(regularize="max")`` therefore trains the max subnet with the
model's dropout and drop-path and every other sampled subnet with them off.

How it is found, generically (no per-family list to keep up to date):

* ``torch.nn`` dropout modules (``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, …): their ``p``;
* any other float attribute in (0, 1] of a module whose name contains ``drop``: timm ``DropPath.drop_prob``,
  ``DropBlock2d.drop_prob``, a timm model's ``drop_rate`` (head dropout through ``F.dropout``), HF attention's
  ``attention_dropout`` / ``dropout`` / ``dropout_p`` floats, ``activation_dropout``, ``hidden_dropout``, ``layerdrop``,
  ``nn.MultiheadAttention.dropout``;
* the same floats on an HF model's ``config`` (a few HF models read ``self.config.attention_dropout`` in forward).

Each is set to 0 in place (the modules stay in train mode, so BatchNorm keeps using batch statistics) and restored to
its exact saved value; values are written to the owner's ``__dict__``, so no setter runs either way. Why not
``module.eval()`` on dropout modules: HF attention reads ``self.dropout.p if self.training`` on the *attention*
module, and putting that in eval would be a guess about what else its ``training`` flag controls.
"""

from __future__ import annotations

from torch import nn

REGULARIZE = ("max", "all")


def _drop_floats(owner: object) -> list[str]:
    names = []
    for name, value in vars(owner).items():
        if "drop" in name.lower() and type(value) is float and 0.0 < value <= 1.0:
            names.append(name)
    return names


def regularization_attributes(model: nn.Module) -> list[tuple[object, str]]:
    """``(owner, attribute)`` of every non-zero dropout / drop-path probability in ``model`` (see module docstring)."""
    found: list[tuple[object, str]] = []
    configs: dict[int, object] = {}
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and type(module.p) is float and module.p > 0:
            found.append((module, "p"))
        found.extend((module, name) for name in _drop_floats(module))
        config = vars(module).get("config")
        if config is not None and hasattr(config, "__dict__") and not isinstance(config, nn.Module):
            configs.setdefault(id(config), config)
    for config in configs.values():
        found.extend((config, name) for name in _drop_floats(config))
    return found


class RegularizationSwitch:
    """Switches a model's dropout / drop-path off and back on, restoring every value exactly.

    Args:
        model: the network whose regularisation is switched (the whole LightningModule in training).

    Example:
        >>> switch = RegularizationSwitch(model)  # doctest: +SKIP
        >>> switch.off(); loss = step(); loss.backward(); switch.restore()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._saved: list[tuple[object, str, float]] | None = None

    @property
    def is_off(self) -> bool:
        return self._saved is not None

    def off(self) -> None:
        """Set every regularisation probability to 0 (a no-op when already off)."""
        if self._saved is not None:
            return
        # scanned at each switch, not cached: modules may be added or replaced between steps
        self._saved = [(owner, name, vars(owner)[name]) for owner, name in regularization_attributes(self.model)]
        for owner, name, _ in self._saved:
            vars(owner)[name] = 0.0

    def restore(self) -> None:
        """Put every saved value back (a no-op when on)."""
        if self._saved is None:
            return
        for owner, name, value in self._saved:
            vars(owner)[name] = value
        self._saved = None
