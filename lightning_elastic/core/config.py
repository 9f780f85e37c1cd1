"""``SearchSpaceConfig``: what the user asks for; adapters turn it into dims for a concrete model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from lightning_elastic.core.errors import ConfigError

Spec = Literal["auto"] | Sequence[float] | None


def _check_spec(name: str, value: Any) -> None:
    if value is None or value == "auto":
        return
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigError(
            f"`{name}` got {value!r}; allowed: 'auto', None (not elastic), or a non-empty list of numbers. "
            f"HINT: e.g. {name}=(0.5, 0.75, 1.0) for ratios or {name}=(2, 3, 4) for absolute values."
        )
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0]
    if bad:
        raise ConfigError(
            f"`{name}` has invalid values {bad}; allowed: positive numbers (floats <= 1 are ratios, integers "
            "absolute sizes). HINT: drop them."
        )


@dataclass
class SearchSpaceConfig:
    """The elastic dimensions to build, by kind. Each field is ``'auto'`` (the family's paper default),
    ``None`` (not elastic), or a list: floats in (0, 1] are ratios of the full size, integers are absolute sizes.

    Args:
        width: channel / hidden widths inside blocks (ResNet bottleneck, ViT/BERT/Llama MLP hidden).
        depth: blocks kept per stage (CNNs) or layers kept (transformers).
        kernel: depthwise kernel sizes (MobileNetV3 / EfficientNet), odd integers.
        expand: expansion ratios of inverted-residual blocks, as absolute ratios like OFA's (3, 4, 6).
        heads: attention heads (ratios or absolute counts).
        mlp_ratio: ViT MLP ratios as absolute ratios of the embedding dim, e.g. (3.0, 3.5, 4.0).
        embed_dim: embedding / hidden size (ratios or absolute).
        stage_width: ResNet stage output widths (ratios), off by default.
        rank: LoRA ranks (absolute), for peft models.
        resolution: input resolutions; a dim the training loop uses, not the model.
        overrides: ``{dim name or glob: [choices]}`` with absolute values, applied last.
        exclude: dim names or globs kept at full size.
        importance: ``'l1'`` (default), ``'l2'``, a callable, or None to keep the original channel order.
        kernel_transform: learn OFA kernel transformation matrices (adds Parameters).
    """

    width: Spec = "auto"
    depth: Spec = "auto"
    kernel: Spec = "auto"
    expand: Spec = "auto"
    heads: Spec = "auto"
    mlp_ratio: Spec = None
    embed_dim: Spec = None
    stage_width: Spec = None
    rank: Spec = "auto"
    resolution: Sequence[int] | None = None
    overrides: dict[str, list[int]] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    importance: str | Callable | None = "l1"
    kernel_transform: bool = False

    def __post_init__(self) -> None:
        for name in ("width", "depth", "kernel", "expand", "heads", "mlp_ratio", "embed_dim", "stage_width", "rank"):
            value = getattr(self, name)
            if isinstance(value, list):
                value = tuple(value)
                setattr(self, name, value)
            _check_spec(name, value)
        if self.resolution is not None:
            res = tuple(self.resolution)
            if not res or any(isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in res):
                raise ConfigError(
                    f"`resolution` got {self.resolution!r}; allowed: None or a list of positive integers. "
                    "HINT: e.g. resolution=(128, 160, 192, 224)."
                )
            self.resolution = tuple(sorted(set(res)))
        if not isinstance(self.overrides, dict):
            raise ConfigError(
                f"`overrides` must be a dict {{glob: [choices]}}, got {self.overrides!r}. "
                "HINT: e.g. overrides={'layer1.*.width': [16, 32, 64]}."
            )
        for key, choices in self.overrides.items():
            if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices or any(
                isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in choices
            ):
                raise ConfigError(
                    f"`overrides[{key!r}]` got {choices!r}; allowed: a non-empty list of positive integers. "
                    "HINT: overrides use absolute sizes, e.g. {'blocks.*.mlp.hidden': [384, 576, 768]}."
                )
        self.overrides = {k: [int(c) for c in v] for k, v in self.overrides.items()}
        self.exclude = list(self.exclude)
        if self.importance is not None and not callable(self.importance):
            from lightning_elastic.core.importance import resolve_importance

            resolve_importance(self.importance)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (a callable importance is stored as None)."""
        d = asdict(self)
        if callable(d["importance"]):
            d["importance"] = None
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpaceConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown SearchSpaceConfig keys {unknown}; allowed: {sorted(known)}. HINT: check the spelling, "
                "or drop keys written by another version."
            )
        return cls(**d)


def resolve_choices(spec: Spec, full: int, auto: Sequence[float] | None, name: str, *, minimum: int = 1) -> list[int]:
    """Turn a spec into absolute choices for a dim of size ``full``.

    ``auto`` gives the family default (ratios when floats ≤ 1, else absolute). Absolute values above ``full`` are
    dropped (a stage with 3 blocks cannot have depth 4); ``full`` is always included so the max subnet is the original.
    """
    if spec == "auto":
        spec = auto
    if spec is None:
        return [full]
    is_ratio = all(isinstance(v, float) for v in spec) and all(v <= 1.0 for v in spec)
    if is_ratio:
        values = {max(minimum, int(round(v * full))) for v in spec}
    else:
        values = {int(v) for v in spec if minimum <= v <= full}
    values.add(full)
    return sorted(v for v in values if v <= full)
