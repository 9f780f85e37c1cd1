"""Channel spaces: union-find sets of parameter axes that must be sliced alike (built by
:func:`lightning_elastic.adapters.graph.trace.trace_channels`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Member:
    """A parameter axis in a channel space: ``kind`` is ``out`` / ``in`` (conv or linear; ``groups`` > 1 for a
    grouped conv), ``dw`` (depthwise conv), ``norm`` (BN / LN / GN affine + stats) or ``param`` (a loose Parameter ``pname`` sliced on ``axis``)."""

    kind: str
    module: str
    pname: str = ""
    axis: int = 0
    groups: int = 1  # a grouped conv's in / out: the space is made of this many equal segments
    segments: int = 1  # the axis holds this many equal pieces of the space (before a GLU's chunk)


@dataclass
class Space:
    size: int
    members: list[Member] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    producers: int = 0
    #: a residual addition joined it with another space (a stage's stream, not e.g. an SE gate's product)
    residual: bool = False
    #: why channel order matters here (GroupNorm groups, a conv along the channel axis): no importance reordering
    ordered: list[str] = field(default_factory=list)


class ChannelGraph:
    """Union-find over channel spaces; built by :func:`trace_channels`."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.spaces: list[Space] = []
        self.calls: dict[str, int] = {}
        self.module_io: dict[str, tuple[Any, Any]] = {}  # name -> (input info, output info)
        #: children of Sequential / ModuleList containers: (input key, input shape, output grad_fn, output shape),
        #: None when called more than once or not with one tensor
        self.blocks: dict[str, Any] = {}
        self.leaf_out: dict[Any, Any] = {}
        self.links: list[tuple[int, list[int], int]] = []  # (space, its equal pieces, piece count)

    def is_residual(self, name: str) -> bool:
        """Whether block ``name`` keeps its input's shape and adds its input back (an identity shortcut)."""
        rec = self.blocks.get(name)
        if rec is None or rec[0] is None or rec[1] != rec[3]:
            return False
        target, start = rec[0][0], rec[2]
        if start is target or start in self.leaf_out:
            return False  # a single conv / norm is no residual block
        stack, seen = [start], set()
        while stack:
            fn = stack.pop()
            if fn is target:
                return True
            if fn in seen or fn in self.leaf_out or type(fn).__name__ == "AccumulateGrad":
                continue
            seen.add(fn)
            stack.extend(f for f, _ in getattr(fn, "next_functions", ()) if f is not None)
        return False

    def new(self, size: int, member: Member | None = None, fixed: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.spaces.append(Space(int(size)))
        sid = len(self.parent) - 1
        if member is not None:
            self.add(sid, member)
        if fixed:
            self.fix(sid, fixed)
        return sid

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def add(self, sid: int, member: Member) -> None:
        space = self.spaces[self.find(sid)]
        space.members.append(member)
        space.producers += member.kind == "out"

    def fix(self, sid: int, reason: str) -> None:
        self.spaces[self.find(sid)].fixed.append(reason)

    def union(self, a: int, b: int, where: str) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        sa, sb = self.spaces[a], self.spaces[b]
        if sa.size != sb.size:
            self.fix(a, f"{where} joins {sa.size} and {sb.size} channels")
            self.fix(b, f"{where} joins {sa.size} and {sb.size} channels")
            return a
        self.parent[b] = a
        sa.members += sb.members
        sa.fixed += sb.fixed
        sa.producers += sb.producers
        sa.residual = sa.residual or sb.residual or where.startswith("a Add")
        sa.ordered += sb.ordered
        return a

    def link_pieces(self) -> None:
        """Merge a space split into ``k`` equal pieces into the pieces' space (members ``k`` segments each) when
        every piece ended in one space (a GLU: ``a, b = x.chunk(2); a * act(b)``); else fix them all."""
        for sid, pieces, k in self.links:
            roots = {self.find(p) for p in pieces}
            src = self.find(sid)
            if len(roots) != 1 or src in roots:
                for r in roots | {src}:
                    self.fix(r, f"a split into {k} pieces along the channel axis")
                continue
            dst = roots.pop()
            sa, sb = self.spaces[dst], self.spaces[src]
            for m in sb.members:
                m.segments *= k
            self.parent[src] = dst
            sa.members += sb.members
            sa.fixed += sb.fixed
            sa.producers += sb.producers
            sa.ordered += sb.ordered
            sa.residual = sa.residual or sb.residual

    def roots(self) -> list[int]:
        return [i for i in range(len(self.parent)) if self.parent[i] == i]
