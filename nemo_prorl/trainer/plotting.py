"""PNG plots of a run's curves: ``nemo-prorl plot RUN_DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CURVES = ("reward/generated_mean", "reward/mean", "val/reward/mean", "loss", "kl", "entropy",
          "response_length/mean", "clip_frac_high", "clip_frac_low", "grad_norm", "dynamic_sampling/rounds",
          "token_mult_prob_error", "time/step")


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(step records, event records) from ``run_dir/metrics.jsonl``."""
    steps, events = [], []
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            (events if "event" in obj else steps).append(obj)
    return steps, events


def passk_series(curve: dict[str, float], group: str | None = None) -> tuple[list[int], list[float]]:
    """(ks, values) of one pass@k curve, sorted by k.

    The overall ``pass@K`` keys, or with ``group`` that group's ``pass@K/group:G`` keys.
    """
    from nemo_prorl.eval.passk import GROUP_PREFIX

    suffix = "" if group is None else f"/{GROUP_PREFIX}{group}"
    ks = []
    for key in curve:
        head, sep, tail = key.partition("/")
        if head.startswith("pass@") and (sep + tail) == suffix:
            ks.append(int(head[len("pass@"):]))
    ks.sort()
    return ks, [curve[f"pass@{k}{suffix}"] for k in ks]


def plot_passk(curves: dict[str, dict[str, float]], path: Path) -> list[str]:
    """pass@k against k (log2 axis) for each curve (``base``, ``final``, ...).

    Without difficulty groups: one line per curve. With groups (``pass@K/group:G`` keys, written when the
    evaluation rows carry a ``group``): one colour per group, solid for the final policy and dashed for
    the base, so the gap between a group's two lines is where RL moved what the model can solve.
    Returns the drawn lines' labels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nemo_prorl.eval.passk import groups_in

    groups = sorted({g for c in curves.values() for g in groups_in(c)})
    fig, ax = plt.subplots(figsize=(6.5 if groups else 5, 4.2 if groups else 3.5))
    if not groups:
        for label, curve in curves.items():
            ks, ys = passk_series(curve)
            ax.plot(ks, ys, marker="o", label=label)
    else:
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for gi, group in enumerate(groups):
            for label, curve in curves.items():
                ks, ys = passk_series(curve, group)
                if ks:
                    ax.plot(ks, ys, marker="o" if label != "base" else "x", color=colours[gi % len(colours)],
                            linestyle="--" if label == "base" else "-", label=f"{group} {label}")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.legend(fontsize=8, ncol=2 if groups else 1)
    ax.grid(alpha=0.3)
    ax.set_title("pass@k on held-out prompts" + (" per difficulty group" if groups else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    labels = [line.get_label() for line in ax.get_lines()]
    plt.close(fig)
    return labels


def plot_run(run_dir: Path) -> list[Path]:
    """Write one PNG per available curve (reset events drawn as vertical lines) and an overview."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, events = read_metrics(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    resets = [e["step"] for e in events if e.get("event") == "reset"]
    present = [c for c in CURVES if any(isinstance(r.get(c), (int, float)) for r in steps)]
    written = []
    if not present:
        return written
    cols = 3
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, present):
        xs = [r["step"] for r in steps if isinstance(r.get(name), (int, float))]
        ys = [r[name] for r in steps if isinstance(r.get(name), (int, float))]
        ax.plot(xs, ys, marker="." if len(xs) < 40 else None)
        for s in resets:
            ax.axvline(s, color="red", linestyle="--", linewidth=0.8)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle(f"{run_dir.name} (red dashes: reference/optimizer resets)")
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)
    passk = run_dir / "passk.json"
    if passk.exists():
        path = out_dir / "passk.png"
        plot_passk(json.loads(passk.read_text()).get("curves", {}), path)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """``nemo-prorl plot RUN_DIR``."""
    ap = argparse.ArgumentParser(prog="nemo-prorl plot", description="plot a run directory's metrics")
    ap.add_argument("run_dir")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        print(f"nemo-prorl plot: {run_dir}/metrics.jsonl not found", file=sys.stderr)
        return 2
    for p in plot_run(run_dir):
        print(p)
    return 0
