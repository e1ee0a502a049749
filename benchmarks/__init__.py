"""Benchmarks: ours beside the course's way, measured side by side in one run (`make bench`).

Each benchmarks/bench_<part>.py has `run() -> list[Table]`; `python -m benchmarks [part ...]`
runs them and prints the tables. Speed is measured here, never in timed tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list] = field(default_factory=list)
    note: str = ""

    def render(self) -> str:
        cells = [[format_cell(c) for c in row] for row in self.rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(self.headers)]
        line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
        out = [f"## {self.title}", "", line(self.headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(r) for r in cells]
        if self.note:
            out += ["", self.note]
        return "\n".join(out) + "\n"


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
