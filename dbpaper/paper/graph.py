"""Figure 1 of the paper, derived from the computation instead of drawn by hand.

:func:`dependency_graph` runs the forward pass and Algorithm 1 of the
package with autograd recording and reads the *direct* dependencies between
the named quantities ``x_j``, ``z_j``, ``ξ_j``, ``ζ_j``, ``v``, ``ℒ`` and ``R``
off the recorded graph: walking back from a quantity, the walk stops at the
first named quantities it meets, and those are its direct inputs. Parameters
and constants are not nodes. An edge ``A → B`` means "B is a function of A"
(the paper's convention).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from ..losses import loss_value
from ..network import Network
from ..normalisation import require_coordinatewise

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..penalties import Penalty

__all__ = ["DependencyGraph", "dependency_graph", "draw_dependency_graph"]


@dataclasses.dataclass(frozen=True)
class DependencyGraph:
    """Nodes (in drawing order) and direct-dependency edges ``(source, target)``."""

    depth: int
    nodes: tuple[str, ...]
    edges: frozenset[tuple[str, str]]

    def inputs_of(self, node: str) -> list[str]:
        """The direct inputs of ``node``, sorted by drawing order."""
        return sorted((a for a, b in self.edges if b == node), key=self.nodes.index)

    def ancestors(self, node: str) -> set[str]:
        """Every node ``node`` depends on, directly or through others."""
        seen, todo = set(), [node]
        while todo:
            for a in self.inputs_of(todo.pop()):
                if a not in seen:
                    seen.add(a)
                    todo.append(a)
        return seen


def _named_run(net: Network, x: torch.Tensor, penalty, y):
    net.require_chain("dependency_graph")
    require_coordinatewise(net, "dependency_graph")
    L = net.depth
    named: dict[str, torch.Tensor] = {}
    with torch.enable_grad():
        xj = x.detach().clone().requires_grad_(True)
        named["x0"] = xj
        dgs = [None]
        for j, layer in enumerate(net.layers, start=1):
            z = layer.add_bias(layer.K(layer.theta(x), xj))
            named[f"z{j}"] = z
            xj = layer.activation.f(z)
            named[f"x{j}"] = xj
            dgs.append(layer.activation.df(z) if j < L else None)
        x_L = xj
        if penalty.loss is not None:  # v = ∇_{x_L} ℓ(x_L, y), a function of x_L
            xl = x_L
            with torch.enable_grad():
                (v,) = torch.autograd.grad(loss_value(net.output_map, xl, y, penalty.loss) * x.shape[0], xl, create_graph=True)
        else:  # a network-independent v: a leaf of its own
            v = torch.zeros_like(x_L).reshape(x.shape[0], -1)
            v[:, 0] = 1
            v = v.reshape(x_L.shape).requires_grad_(True)
        named["v"] = v
        zeta = net.output_map.jvp(x_L, v)
        named[f"ζ{L}"] = zeta
        for j in range(L, 0, -1):
            layer = net.layers[j - 1]
            xi = layer.KT(layer.theta(x), zeta)
            named[f"ξ{j - 1}"] = xi
            if j > 1:
                zeta = dgs[j - 1] * xi
                named[f"ζ{j - 1}"] = zeta
        named["R"] = penalty.p.value(named["ξ0"]).sum()
        if y is not None:
            named["ℒ"] = loss_value(net.output_map, x_L, y, penalty.loss or "nll")
    return named


def _node_key(t: torch.Tensor):
    return t.grad_fn if t.grad_fn is not None else ("leaf", id(t))


def dependency_graph(net: Network, x: torch.Tensor, penalty: Penalty, y: torch.Tensor | None = None) -> DependencyGraph:
    """Direct dependencies among the quantities of Sections 3–4 for ``penalty`` on ``net``."""
    named = _named_run(net, x, penalty, y)
    owner = {}
    for name, t in named.items():
        owner.setdefault(_node_key(t), name)
    leaves = {id(t): name for name, t in named.items() if t.grad_fn is None}
    edges = set()
    for name, t in named.items():
        if t.grad_fn is None:
            continue
        stack, seen = [fn for fn, _ in t.grad_fn.next_functions if fn is not None], set()
        while stack:
            fn = stack.pop()
            if fn in seen:
                continue
            seen.add(fn)
            if fn in owner and owner[fn] != name:
                edges.add((owner[fn], name))
                continue
            var = getattr(fn, "variable", None)  # AccumulateGrad of a leaf
            if var is not None:
                if id(var) in leaves and leaves[id(var)] != name:
                    edges.add((leaves[id(var)], name))
                continue
            stack.extend(f for f, _ in fn.next_functions if f is not None)
    return DependencyGraph(net.depth, tuple(named), frozenset(edges))


def _positions(depth: int) -> dict[str, tuple[float, float]]:
    pos = {"x0": (0.0, 1.0)}
    for j in range(1, depth + 1):
        pos[f"z{j}"] = (2 * j - 1, 1.0)
        pos[f"x{j}"] = (2 * j, 1.0)
    pos["ℒ"] = (2 * depth + 1, 1.0)
    pos["v"] = (2 * depth + 1, 0.0)
    for j in range(depth, 0, -1):
        pos[f"ζ{j}"] = (2 * j - 1, 0.0)
        pos[f"ξ{j - 1}"] = (2 * j - 2, 0.0)
    pos["R"] = (-1.0, 0.0)
    return pos


def _label(name: str) -> str:
    for greek, tex in (("ξ", r"\xi"), ("ζ", r"\zeta")):
        if name.startswith(greek):
            return f"${tex}_{{{name[1:]}}}$"
    if name == "ℒ":
        return r"$\mathcal{L}$"
    if name == "R":
        return r"$\mathcal{R}$"
    if name == "v":
        return r"$v=\xi_L$"
    return f"${name[0]}_{{{name[1:]}}}$"


def draw_dependency_graph(ax: Axes, graph: DependencyGraph, dashed: frozenset[tuple[str, str]] = frozenset()) -> None:
    """Draw ``graph`` with the forward quantities on top and the backward ones below (as in Figure 1)."""
    pos = _positions(graph.depth)
    for a, b in sorted(graph.edges):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        rad = 0.25 if y0 == y1 and abs(x1 - x0) > 1.5 else 0.0
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops=dict(
                arrowstyle="-|>", color="C3" if y0 != y1 else "0.3", lw=1.0,
                ls="--" if (a, b) in dashed else "-", shrinkA=11, shrinkB=11, connectionstyle=f"arc3,rad={rad}",
            ),
        )
    for name in graph.nodes:
        x, y = pos[name]
        ax.text(x, y, _label(name), ha="center", va="center", fontsize=10,
                bbox=dict(boxstyle="circle,pad=0.25", fc="white", ec="0.2", lw=0.8))
    ax.set_xlim(-1.7, 2 * graph.depth + 1.7)
    ax.set_ylim(-0.5, 1.5)
    ax.axis("off")
