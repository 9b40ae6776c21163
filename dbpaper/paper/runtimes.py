"""Tables and figures of the *Runtimes* chapter, read from the benchmark JSON (``python -m dbpaper bench``).

Nothing here times anything: the chapter reads ``book/data/bench-cpu*.json``. Timing figures show the
median of each method's timed calls with their interquartile range (``time_ms_iqr``); "where the time
goes" splits a call into its *floor* (its matrix products and convolutions replayed alone, ``floor_ms``)
and the rest.
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
    "compiled_rows",
    "default_rows",
    "load",
    "memory_growth",
    "method_table",
    "plot_methods",
    "plot_sweeps",
    "plot_time_split",
    "target_rows",
    "time_split",
]

ORDER = ("default", "default-compiled", "alg4", "alg4-shortcuts", "alg4-chunked", "alg1-3", "minimal", "autograd-summed",
         "autograd-compiled", "autograd-per-class", "vmap-jacrev", "hoffman-1proj")  # fmt: skip
COLORS = {"default": "k", "default-compiled": "#a6761d", "alg4": "C0", "alg4-shortcuts": "C9", "alg4-chunked": "C2", "alg1-3": "C7",
          "minimal": "C8", "autograd-summed": "C3", "autograd-compiled": "#e7298a", "autograd-per-class": "C1",
          "vmap-jacrev": "C4", "hoffman-1proj": "C5"}  # fmt: skip
#: one line style and marker per method in the sweeps, so that no two lines look alike
MARKERS = {"default": ("o", "-"), "default-compiled": ("o", ":"), "alg4": ("s", "--"), "alg4-shortcuts": ("^", "-."),
           "alg4-chunked": ("v", ":"), "alg1-3": ("D", "-"), "minimal": ("P", "--"), "autograd-summed": ("x", "-"),
           "autograd-compiled": ("x", ":"), "autograd-per-class": ("<", "-."), "vmap-jacrev": (">", "--"),
           "hoffman-1proj": ("*", ":")}  # fmt: skip


def load(path: str | Path) -> dict:
    """A benchmark result (schema 2, or 3 with the floor, version and commit) with a ``by_name`` index of its workloads."""
    data = json.loads(Path(path).read_text())
    if data.get("schema") not in (2, 3):
        raise ValueError(f"{path}: expected a schema-2 or schema-3 benchmark result, got schema {data.get('schema')}")
    data["by_name"] = {w["name"]: w for w in data["workloads"]}
    return data


def _iqr(r: dict) -> str:
    lo, hi = r.get("time_ms_iqr", (r["time_ms"], r["time_ms"]))
    return f"{lo:.3g}–{hi:.3g}"


def method_table(data: dict, name: str) -> Table:
    """Every method on one workload: speed-up over autograd (summed), median time with its interquartile range,
    the floor's share of the time, FLOPs over autograd's, roofline share, memory, deviation (the speed-up first:
    it stays in view on a narrow screen)."""
    w = data["by_name"][name]
    res, base = w["results"], w["results"]["autograd-summed"]
    peak = data["machine"]["matmul_gflops_per_s"]
    rows = []
    for m in ORDER:
        if m not in res:
            continue
        r = res[m]
        rows.append([
            data["methods"][m]["label"], base["time_ms"] / r["time_ms"], f"{r['time_ms']:.3g} ({_iqr(r)})",
            r["floor_ms"] / r["time_ms"] if "floor_ms" in r else "", r["flops"] / base["flops"],
            r["gflops_per_s"] / peak, r["working_mib"],
            f"{r['max_rel_diff']:.0e}" if data["methods"][m]["exact"] else "estimate",
        ])  # fmt: skip
    cols = ["method", "speed-up", "ms: median (IQR)", "floor / time", "FLOPs / autograd", "share of matmul rate",
            "working MiB", "deviation"]  # fmt: skip
    return table(rows, cols, caption=f"{name}: {w['description']}", digits=3)


def compiled_rows(data: dict) -> list[dict]:
    """Per workload with compiled peers: the eager and compiled default against eager and compiled autograd."""
    rows = []
    for w in data["workloads"]:
        res = w["results"]
        if "autograd-compiled" not in res and "default-compiled" not in res:
            continue
        t = {m: res[m]["time_ms"] for m in ("default", "default-compiled", "autograd-summed", "autograd-compiled") if m in res}
        row = {"workload": w["name"], "default / autograd": t["autograd-summed"] / t["default"]}
        if "autograd-compiled" in t:
            row["default / compiled autograd"] = t["autograd-compiled"] / t["default"]
            row["compiled autograd / autograd"] = t["autograd-summed"] / t["autograd-compiled"]
        if "default-compiled" in t:
            row["compiled default / default"] = t["default"] / t["default-compiled"]
        if "default-compiled" in t and "autograd-compiled" in t:
            row["compiled default / compiled autograd"] = t["autograd-compiled"] / t["default-compiled"]
        rows.append(row)
    return rows


def time_split(data: dict, methods=("default", "autograd-summed")) -> list[dict]:
    """Where the time goes, per workload: each method's median time, its floor (the call's matrix products and
    convolutions replayed alone) and the rest, in ms and as fractions of autograd's (summed) median time."""
    rows = []
    for w in data["workloads"]:
        res = w["results"]
        if not all(m in res and "floor_ms" in res[m] for m in methods):
            continue
        base = res["autograd-summed"]["time_ms"]
        for m in methods:
            r = res[m]
            rows.append({"workload": w["name"], "group": w["group"], "method": m, "time_ms": r["time_ms"], "floor_ms": r["floor_ms"],
                         "rest_ms": r["time_ms"] - r["floor_ms"], "floor": r["floor_ms"] / base,
                         "rest": (r["time_ms"] - r["floor_ms"]) / base})  # fmt: skip
    return rows


def _speedup_target(data: dict, name: str) -> float:
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

    from .figures import page_width

    res = data["by_name"][name]["results"]
    methods = [m for m in ORDER if m in res]
    fig, axes = plt.subplots(3, 1, figsize=(page_width(0.85), 2.6 + 0.6 * len(methods)), sharey=True)
    for ax, key, scale, title in zip(axes, ("time_ms", "flops", "working_mib"), (1, 1e9, 1),
                                     ("wall time [ms]: median, bar: interquartile range", "GFLOP (matrix products)",
                                      "working memory [MiB]")):  # fmt: skip
        values = [res[m][key] / scale for m in methods]
        err = None
        if key == "time_ms":  # the spread of the timed calls: from the lower to the upper quartile
            iqr = [res[m].get("time_ms_iqr", (res[m]["time_ms"],) * 2) for m in methods]
            err = [[v - lo for v, (lo, _) in zip(values, iqr)], [hi - v for v, (_, hi) in zip(values, iqr)]]
        ax.barh(range(len(methods)), values, color=[COLORS[m] for m in methods], xerr=err,
                error_kw={"ecolor": "0.25", "capsize": 2, "lw": 1})
        ax.axvline(res["autograd-summed"][key] / scale, color="C3", lw=0.8, ls="--")
        ax.set_yticks(range(len(methods)), [data["methods"][m]["label"] for m in methods])
        ax.invert_yaxis()
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_time_split(data: dict, names=None):
    """Where the time goes: per workload, the default and autograd (summed), each split into its floor (matrix
    products and convolutions replayed alone) and the rest, as fractions of autograd's median time."""
    import matplotlib.pyplot as plt

    from .figures import page_width

    rows = time_split(data)
    if names is not None:
        rows = [r for r in rows if r["workload"] in names]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    height = 1.7 + 0.42 * len(workloads)
    fig, ax = plt.subplots(figsize=(page_width(), height))
    labels = {"default": "dbpaper default", "autograd-summed": "autograd, summed"}
    for k, method in enumerate(("default", "autograd-summed")):
        mine = {r["workload"]: r for r in rows if r["method"] == method}
        ys = [i + (k - 0.5) * 0.4 for i in range(len(workloads))]
        floor = [mine[w]["floor"] for w in workloads]
        rest = [mine[w]["rest"] for w in workloads]
        col = COLORS[method]
        ax.barh(ys, floor, height=0.38, color=col, label=f"{labels[method]}: matrix products (floor)")
        ax.barh(ys, rest, left=floor, height=0.38, color="white", edgecolor=col, hatch="///" if k else "...", lw=0.8,
                label=f"{labels[method]}: everything else")
    ax.axvline(1.0, color="C3", lw=0.8, ls="--")
    ax.set_yticks(range(len(workloads)), workloads)
    ax.invert_yaxis()
    ax.set_xlabel("median time of a call / that of autograd, summed")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / height, 1, 1))
    return fig


def plot_sweeps(data: dict):
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
    from .figures import page_width

    fig, axes = plt.subplots(len(groups), 2, figsize=(page_width(), 1.6 + 2.9 * len(groups)), squeeze=False)
    for row, (group, xlabel) in enumerate(groups):
        ws = [w for w in data["workloads"] if w["group"] == group]
        xs = [w["params"]["x"] for w in ws]
        for m in ORDER:
            if m not in ws[0]["results"]:
                continue
            marker, ls = MARKERS[m]
            kw = dict(marker=marker, ms=4, ls=ls, color=COLORS[m], label=data["methods"][m]["label"], lw=2 if m == "default" else 1)
            axes[row, 1].plot(xs, [w["results"][m]["working_mib"] for w in ws], **kw)  # autograd (summed) included
            if m == "autograd-summed":  # the baseline of the speed-ups: the dashed parity line
                continue
            base = [w["results"]["autograd-summed"]["time_ms"] for w in ws]
            axes[row, 0].plot(xs, [b / w["results"][m]["time_ms"] for b, w in zip(base, ws)], **kw)
            if all("time_ms_iqr" in w["results"][m] for w in ws):  # the spread of the method's timed calls
                axes[row, 0].fill_between(xs, [b / w["results"][m]["time_ms_iqr"][1] for b, w in zip(base, ws)],
                                          [b / w["results"][m]["time_ms_iqr"][0] for b, w in zip(base, ws)],
                                          color=COLORS[m], alpha=0.18, lw=0)
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
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.85 / (1.6 + 2.9 * len(groups))))
    return fig
