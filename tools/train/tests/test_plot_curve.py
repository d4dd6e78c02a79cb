"""The GRPO curve plot: every series drawn, per step and smoothed, on the right axes."""

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def test_plot_draws_each_series_raw_and_smoothed(tmp_path):
    csv = tmp_path / "curve.csv"
    rows = ["step,reward,accuracy,length,kl,loss,seconds"]
    rows += [f"{s},{s / 10:.2f},{1 - s / 10:.2f},{80 - 5 * s},0.01,0.0,{30 * s}" for s in range(1, 9)]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "curve.svg"
    subprocess.run([sys.executable, str(HERE / "plot_curve.py"), str(csv), str(out), "--window", "2"], check=True)
    svg = out.read_text()
    lines = re.findall(r'<polyline [^>]*points="([^"]+)"', svg)
    assert len(lines) == 6  # reward, accuracy, length: raw and moving average
    raw_reward = [tuple(map(float, p.split(","))) for p in lines[0].split()]
    assert len(raw_reward) == 8
    # Rising reward goes up the plot (smaller y), falling length down it.
    assert raw_reward[-1][1] < raw_reward[0][1]
    raw_length = [tuple(map(float, p.split(","))) for p in lines[4].split()]
    assert raw_length[-1][1] > raw_length[0][1]
