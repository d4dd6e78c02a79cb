#!/usr/bin/env python3
"""SVG plot of a GRPO training curve (grpo.py --curve CSV): reward and accuracy of the sampled
groups (left axis, 0-1) and mean reply length in tokens (right axis), per step and as a
moving average. Standard library only (the training venv has no plotting package).

    python3 tools/train/plot_curve.py CURVE.csv OUT.svg [--window 8] [--title TEXT]
"""

from __future__ import annotations

import argparse
import csv

W, H, PAD = 720, 360, 48
SERIES = [("reward", "#1f77b4", False), ("accuracy", "#2ca02c", False), ("length", "#d62728", True)]


def moving_average(v: list[float], k: int) -> list[float]:
    out, s = [], 0.0
    for i, x in enumerate(v):
        s += x
        if i >= k:
            s -= v[i - k]
        out.append(s / min(i + 1, k))
    return out


def polyline(xs, ys, to_x, to_y, color, width, opacity):
    pts = " ".join(f"{to_x(x):.1f},{to_y(y):.1f}" for x, y in zip(xs, ys))
    return f'<polyline fill="none" stroke="{color}" stroke-width="{width}" stroke-opacity="{opacity}" points="{pts}"/>'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("curve")
    p.add_argument("out")
    p.add_argument("--window", type=int, default=8, help="moving-average window (steps)")
    p.add_argument("--title", default="budget GRPO")
    a = p.parse_args()
    rows = list(csv.DictReader(open(a.curve)))
    steps = [int(r["step"]) for r in rows]
    max_len = max(float(r["length"]) for r in rows)
    len_top = max(10.0, 10 * ((max_len + 9) // 10))
    to_x = lambda s: PAD + (W - 2 * PAD) * (s - steps[0]) / max(1, steps[-1] - steps[0])  # noqa: E731
    left = lambda y: H - PAD - (H - 2 * PAD) * y  # noqa: E731
    right = lambda y: left(y / len_top)  # noqa: E731
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{a.title}</text>',
           f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="black"/>',
           f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="black"/>',
           f'<line x1="{W - PAD}" y1="{PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="black"/>']
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = left(f)
        svg.append(f'<text x="{PAD - 6}" y="{y + 4}" text-anchor="end">{f:.2f}</text>')
        svg.append(f'<text x="{W - PAD + 6}" y="{y + 4}">{f * len_top:.0f}</text>')
        svg.append(f'<line x1="{PAD}" y1="{y}" x2="{W - PAD}" y2="{y}" stroke="#ddd"/>')
    for s in sorted({steps[0], steps[-1], *range(0, steps[-1] + 1, 10)} - {0} | {steps[0]}):
        svg.append(f'<text x="{to_x(s)}" y="{H - PAD + 16}" text-anchor="middle">{s}</text>')
    svg.append(f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">step</text>')
    svg.append(f'<text x="{W - 8}" y="{PAD - 10}" text-anchor="end">tokens</text>')
    for i, (name, color, on_right) in enumerate(SERIES):
        ys = [float(r[name]) for r in rows]
        to_y = right if on_right else left
        svg.append(polyline(steps, ys, to_x, to_y, color, 1, 0.3))
        svg.append(polyline(steps, moving_average(ys, a.window), to_x, to_y, color, 2.5, 1.0))
        label = f"{name} ({'right' if on_right else 'left'} axis; {a.window}-step mean bold)"
        svg.append(f'<text x="{PAD + 10}" y="{H - PAD - 8 - 16 * (len(SERIES) - 1 - i)}" fill="{color}">{label}</text>')
    svg.append("</svg>")
    with open(a.out, "w") as f:
        f.write("\n".join(svg) + "\n")
    print(f"wrote {a.out} ({len(rows)} steps)")


if __name__ == "__main__":
    main()
