"""Tables and figures of the *Runtimes* chapter, read from the benchmark JSON (``python -m dbpaper bench``).

Nothing here times anything: the chapter reads ``book/data/bench-cpu*.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bench import REGISTERED
from .tables import Table, table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "default_rows",
    "load",
    "memory_growth",
    "method_table",
    "plot_methods",
    "plot_sweeps",
    "target_rows",
]

ORDER = ("default", "alg4", "alg4-shortcuts", "alg4-chunked", "alg1-3", "minimal", "autograd-summed",
         "autograd-per-class", "vmap-jacrev", "hoffman-1proj")  # fmt: skip
COLORS = {"default": "k", "alg4": "C0", "alg4-shortcuts": "C9", "alg4-chunked": "C2", "alg1-3": "C7", "minimal": "C8",
          "autograd-summed": "C3", "autograd-per-class": "C1", "vmap-jacrev": "C4", "hoffman-1proj": "C5"}  # fmt: skip


def load(path: str | Path) -> dict[str, Any]:
    """A benchmark result (schema 2) with a ``by_name`` index of its workloads."""
    data = json.loads(Path(path).read_text())
    if data.get("schema") != 2:
        raise ValueError(f"{path}: expected a schema-2 benchmark result, got schema {data.get('schema')}")
    data["by_name"] = {w["name"]: w for w in data["workloads"]}
    return data


def method_table(data: dict[str, Any], name: str) -> Table:
    """Every method on one workload: time, speed-up over autograd (summed), FLOPs, roofline share, memory, deviation."""
    w = data["by_name"][name]
    res, base = w["results"], w["results"]["autograd-summed"]
    peak = data["machine"]["matmul_gflops_per_s"]
    rows = []
    for m in ORDER:
        if m not in res:
            continue
        r = res[m]
        rows.append([
            data["methods"][m]["label"], r["time_ms"], base["time_ms"] / r["time_ms"], r["flops"] / 1e9,
            r["flops"] / base["flops"], r["gflops_per_s"] / peak, r["working_mib"],
            f"{r['max_rel_diff']:.0e}" if data["methods"][m]["exact"] else "estimate",
        ])  # fmt: skip
    cols = ["method", "ms", "speed-up", "GFLOP", "FLOPs / autograd", "share of matmul rate", "working MiB", "deviation"]
    return table(rows, cols, caption=f"{name}: {w['description']}", digits=3)


def _speedup_target(data: dict[str, Any], name: str) -> float:
    targets = data["targets"]["speedup"]
    return targets.get(name, targets["*"])


def default_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per workload: what the default call picks, its predicted FLOPs against autograd's, and how it fares."""
    rows = []
    for w in data["workloads"]:
        res, plan = w["results"], w["default_plan"]
        regs = {k: res[k]["time_ms"] for k in REGISTERED if k in res}
        fastest = min(regs, key=regs.get)
        speedup = res["autograd-summed"]["time_ms"] / res["default"]["time_ms"]
        rows.append({
            "workload": w["name"],
            "default runs": plan["algorithm"] + (f" (chunks of {plan['chunk_size']})" if plan.get("chunk_size") else ""),
            "predicted FLOPs / autograd": plan["predicted_flops"] / plan["autograd_flops"],
            "measured FLOPs / autograd": res["default"]["flops"] / res["autograd-summed"]["flops"],
            "default / fastest registered": res["default"]["time_ms"] / regs[fastest],
            "fastest registered": REGISTERED[fastest],
            "speed-up over autograd": speedup,
            "target": _speedup_target(data, w["name"]),
            "met": speedup >= _speedup_target(data, w["name"]),
        })  # fmt: skip
    return rows


def memory_growth(data: dict[str, Any], lo: int = 10, hi: int = 1000) -> dict[str, float]:
    """Working memory at ``C = hi`` over ``C = lo`` per method (the classes sweep)."""
    sweep = {w["params"]["x"]: w["results"] for w in data["workloads"] if w["group"] == "classes"}
    return {m: sweep[hi][m]["working_mib"] / max(sweep[lo][m]["working_mib"], 1e-9) for m in sweep[lo] if m in sweep[hi]}


def target_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """This project's goals (``data["targets"]``, not the paper's) against the measurements."""
    t = data["targets"]
    rows = default_rows(data)
    flops_ok = [r for r in rows if r["measured FLOPs / autograd"] <= t["flops"] * 1.0001]
    speed_ok = [r for r in rows if r["met"]]
    near = [r for r in rows if r["default / fastest registered"] <= t["default_vs_fastest"]]
    growth = memory_growth(data)
    out = [
        {"goal": f"speed-up over autograd (summed) >= {_speedup_target(data, n)} on {n}", "measured": r["speed-up over autograd"],
         "met": r["met"]}
        for n in ("mlp", "mlp-tanh", "cnn") for r in rows if r["workload"] == n
    ]  # fmt: skip
    out += [
        {"goal": f"speed-up >= {t['speedup']['*']} on every other workload", "measured": f"{len(speed_ok)} of {len(rows)}",
         "met": len(speed_ok) == len(rows)},
        {"goal": f"FLOPs <= {t['flops']} x autograd on every workload", "measured": f"{len(flops_ok)} of {len(rows)}",
         "met": len(flops_ok) == len(rows)},
        {"goal": f"default within {t['default_vs_fastest']:.2f} x the fastest registered algorithm", "measured": f"{len(near)} of {len(rows)}",
         "met": len(near) == len(rows)},
        {"goal": f"working memory of the default grows <= {t['memory_growth']} x from C = 10 to 1000",
         "measured": growth["default"], "met": growth["default"] <= t["memory_growth"]},
    ]  # fmt: skip
    return out


def plot_methods(data: dict[str, Any], name: str, path_stem: str | None = None) -> Figure:
    """Bar charts of time, FLOPs and working memory per method on one workload."""
    import matplotlib.pyplot as plt

    res = data["by_name"][name]["results"]
    methods = [m for m in ORDER if m in res]
    fig, axes = plt.subplots(3, 1, figsize=(6.5, 7.5), sharey=True)
    for ax, key, scale, title in zip(axes, ("time_ms", "flops", "working_mib"), (1, 1e9, 1),
                                     ("median wall time [ms]", "GFLOP (matrix products)", "working memory [MiB]")):  # fmt: skip
        ax.barh(range(len(methods)), [res[m][key] / scale for m in methods], color=[COLORS[m] for m in methods])
        ax.axvline(res["autograd-summed"][key] / scale, color="C3", lw=0.8, ls="--")
        ax.set_yticks(range(len(methods)), [data["methods"][m]["label"] for m in methods], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_sweeps(data: dict[str, Any]) -> Figure:
    """Speed-up of the default and its peers over autograd (summed) across classes, depth and batch size.

    Both columns have logarithmic y axes: the speed-ups span two decades (the random projection against the
    exact methods), the working memory three.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    def fixed(group: str) -> str:  # what the sweep holds fixed, read from the file
        p = next(w["params"] for w in data["workloads"] if w["group"] == group)
        parts = {"classes": [f"batch {p.get('batch')}"], "depth": [f"batch {p.get('batch')}", f"$C = {p.get('classes')}$"],
                 "batch": [f"$L = {len(p.get('widths', [])) - 1}$", f"$C = {p.get('classes')}$"]}[group]  # fmt: skip
        return ", ".join(parts)

    names = {"classes": "classes $C$", "depth": "depth $L$", "batch": "batch $N$"}
    groups = [(g, f"{names[g]} ({fixed(g)})") for g in names if any(w["group"] == g for w in data["workloads"])]
    fig, axes = plt.subplots(len(groups), 2, figsize=(9, 3.2 * len(groups)), squeeze=False)
    for row, (group, xlabel) in enumerate(groups):
        ws = [w for w in data["workloads"] if w["group"] == group]
        xs = [w["params"]["x"] for w in ws]
        for m in ORDER:
            if m not in ws[0]["results"] or m == "autograd-summed":
                continue
            kw = dict(marker="o", ms=3, color=COLORS[m], label=data["methods"][m]["label"], lw=2 if m == "default" else 1)
            axes[row, 0].plot(xs, [w["results"]["autograd-summed"]["time_ms"] / w["results"][m]["time_ms"] for w in ws], **kw)
            axes[row, 1].plot(xs, [w["results"][m]["working_mib"] for w in ws], **kw)
        axes[row, 0].axhline(1, color="C3", lw=0.8, ls="--")
        axes[row, 0].set_ylabel("speed-up over autograd")
        axes[row, 0].set_yscale("log")  # the random projection is orders of magnitude faster than the exact methods
        axes[row, 1].set_ylabel("working memory [MiB]")
        axes[row, 1].set_yscale("log")
        for ax in axes[row]:
            ax.set_xlabel(xlabel)
            if group != "depth":
                ax.set_xscale("log")
            ax.set_xticks(xs, [str(v) for v in xs])
            ax.minorticks_off()
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0, 0].legend(fontsize=6.5)
    fig.tight_layout()
    return fig
