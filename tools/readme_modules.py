"""The README's table of supported modules, written from the layer readers (``dbpaper.readers.READERS``).

The table sits between two markers in README.md; this script rewrites it, or with ``--check``
exits 1 if it differs from what the readers say (a test runs the check).

Usage: python tools/readme_modules.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN = "<!-- supported-modules: written by tools/readme_modules.py from dbpaper.readers -->"
END = "<!-- /supported-modules -->"
ROLE = {
    "linear": "linear part `K(θ, x) + b`",
    "activation": "coordinate-wise `g` (hidden, or the output map)",
    "output": "output map (last module only)",
    "reshape": "reshape, no layer",
    "skip": "nothing",
    "normalisation": "normalisation `g` (not coordinate-wise), then its affine part as a linear layer",
}


def table() -> str:
    """The Markdown table: module, role in eq. (8), notes — one row per reader, in registration order."""
    sys.path.insert(0, str(ROOT))
    from dbpaper.readers import READERS

    rows = ["| module | in eq. (8) | notes |", "|---|---|---|"]
    for reader in READERS.values():
        mod = reader.module
        name = f"dbpaper.nn.{mod.__name__}" if mod.__module__.startswith("dbpaper") else f"nn.{mod.__name__}"
        role = ROLE[reader.kind]
        if reader.kind == "activation" and reader.example is not None and not reader.read(reader.example(), ()).output_invertible():
            role = "coordinate-wise `g` (hidden layers only)"
        rows.append(f"| `{name}` | {role} | {reader.description} |")
    rows.append("| `nn.Sequential` | a sequence of the above (nested as deep as you like) | |")
    rows.append(
        "| `dbpaper.nn.Residual` | residual block `s(x) + F(x)`: layers that add a skip connection "
        "| `F` and the shortcut `s` (identity, or e.g. a 1×1 convolution and BatchNorm) hold any supported modules |"
    )
    return "\n".join(rows)


def rendered(text: str) -> str:
    """``text`` with the table between the markers replaced by :func:`table`."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = README.read_text()
    new = rendered(text)
    if "--check" in argv:
        if new != text:
            print("README.md's table of supported modules is not what dbpaper.readers says: run python tools/readme_modules.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
