"""``SearchSpaceConfig``: what the user asks for; adapters turn it into dims for a concrete model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from lightning_elastic.core.checks import check_spec
from lightning_elastic.core.errors import ConfigError

# ints and floats mean different things (absolute sizes vs ratios): the type says so, so that LightningCLI / jsonargparse
# keep YAML's [3, 5, 7] as ints instead of coercing them to floats
Spec = Literal["auto"] | Sequence[int | float] | None


#: fields whose floats are ratios of the full size (<= 1) and whose integers are absolute sizes
SIZE_FIELDS = ("width", "depth", "kernel", "heads", "embed_dim", "stage_width", "rank")
#: fields whose values are multipliers (OFA's expand (3, 4, 6), a ViT's mlp_ratio (3.0, 4.0)): any positive number
MULTIPLIER_FIELDS = ("expand", "mlp_ratio")
SPEC_FIELDS = SIZE_FIELDS + MULTIPLIER_FIELDS


def is_ratio_spec(spec: Any) -> bool:
    """Whether a (checked) list spec holds ratios of the full size rather than absolute sizes."""
    return all(isinstance(v, float) for v in spec) and all(v <= 1.0 for v in spec)


def _check_globs(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or any(not isinstance(p, str) or not p
                                                                        for p in value):
        example = [value] if isinstance(value, str) else ["layer1.*.width"]
        raise ConfigError(
            f"`{name}` got {value!r}; allowed: a list of dimension names or globs (a single string would be read "
            f"character by character). HINT: {name}={example!r}."
        )
    return list(value)


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
        stage_width: stage output widths (ratios); reserved, no built-in adapter builds it yet (an explicit value
            is an error there).
        rank: LoRA ranks (absolute), for peft models.
        resolution: input resolutions; a dim the training loop uses, not the model.
        overrides: ``{dim name or glob: [choices]}`` with absolute values, applied last.
        exclude: dim names or globs kept at full size.
        importance: how channels / neurons / heads are ordered, so a narrower choice keeps the most important:
            ``'auto'`` (default) is ``'activation'`` when ``to_supernet`` gets ``calibration_data`` and ``'l1'``
            otherwise (data-driven importance beats weight norms by orders of magnitude on pretrained LLMs;
            L1 is the fallback without data); ``'activation'`` (needs data), ``'l1'``, ``'l2'``, a callable
            ``(group, n_units) -> scores``, or None to keep the original order.
        depth_importance: which layers a smaller depth keeps (transformer adapters): ``'auto'`` (default) is
            ``'influence'`` with calibration data, else the first layers; ``'influence'`` (ShortGPT block
            influence on calibration data, needs data); None (the first layers); or an explicit
            ``{depth dim: [layer indices, most important first]}``, which is what a converted supernet records.
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
    importance: str | Callable | None = "auto"
    depth_importance: str | dict[str, list[int]] | None = "auto"
    kernel_transform: bool = False

    def __post_init__(self) -> None:
        for name in SPEC_FIELDS:
            value = getattr(self, name)
            if isinstance(value, list):
                value = tuple(value)
                setattr(self, name, value)
            check_spec(name, value, multiplier=name in MULTIPLIER_FIELDS)
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
            if not isinstance(key, str) or not key:
                raise ConfigError(
                    f"`overrides` key {key!r} is not a dimension name or glob; allowed: non-empty strings. "
                    "HINT: e.g. overrides={'layer1.*.width': [16, 32, 64]}."
                )
            if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices or any(
                isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in choices
            ):
                raise ConfigError(
                    f"`overrides[{key!r}]` got {choices!r}; allowed: a non-empty list of positive integers. "
                    "HINT: overrides use absolute sizes, e.g. {'blocks.*.mlp.hidden': [384, 576, 768]}."
                )
        self.overrides = {k: [int(c) for c in v] for k, v in self.overrides.items()}
        self.exclude = _check_globs("exclude", self.exclude)
        from lightning_elastic.core.importance import check_depth_importance, check_importance

        check_importance(self.importance)
        check_depth_importance(self.depth_importance)
        if isinstance(self.depth_importance, dict):  # YAML / JSON give lists; keep one form for to_dict comparisons
            self.depth_importance = {k: [int(i) for i in v] for k, v in self.depth_importance.items()}

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
    if is_ratio_spec(spec):
        values = {max(minimum, int(round(v * full))) for v in spec}
    else:
        values = {int(v) for v in spec if minimum <= v <= full}
    values.add(full)
    return sorted(v for v in values if v <= full)


def check_explicit_fields(config: SearchSpaceConfig, built: Mapping[str, Sequence[int]], family: str) -> None:
    """Refuse list specs that would have no effect on this model, instead of silently ignoring them.

    An adapter calls this from ``plan`` with ``{field: [full size of every dim that field built]}`` for the
    fields it reads. A field given as a list that the adapter does not read (``kernel=(3, 5)`` on a ResNet), or an
    absolute size above every full size of its field (``width=(1000,)``), is almost certainly a mistake: the first
    would be ignored and the second dropped, and a dropped list leaves that kind of dim out of the space.

    Raises:
        ConfigError: naming the field, its value, what this model has, and a hint.
    """
    for name in SPEC_FIELDS:
        value = getattr(config, name)
        if value is None or value == "auto":
            continue
        if name not in built:
            raise ConfigError(
                f"`{name}`={value!r} was given, but the {family} adapter builds no {name!r} dimensions (it builds: "
                f"{sorted(built)}), so it would be ignored. HINT: drop `{name}` or set it to None."
            )
        fulls = list(built[name])
        if not fulls or name in MULTIPLIER_FIELDS or is_ratio_spec(value):
            continue
        too_big = sorted(v for v in value if v > max(fulls))
        if too_big:
            raise ConfigError(
                f"`{name}` has absolute sizes {too_big} above the largest full size {max(fulls)} of this model's "
                f"{len(fulls)} {name!r} dimensions (full sizes {sorted(set(fulls))}); they would be dropped"
                + (f", leaving no elastic {name!r} dimension" if all(v > max(fulls) for v in value) else "")
                + f". HINT: use sizes <= {max(fulls)}, or ratios such as {name}=(0.5, 0.75, 1.0)."
            )
