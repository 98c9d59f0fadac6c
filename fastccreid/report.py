"""``fastccreid report RUN_DIR...``: runs side by side from their run records, as a Markdown table and PNG plots.

Each RUN_DIR is a ``train`` / ``eval`` ``--save_dir`` (its ``run.json``) or the SAVE_DIR of ``train --seeds``
(its ``seeds.json``: every ``seed-N`` run in it). Writes into ``--out``: ``report.md`` (each run's last and best
R-1 / mAP / mINP per setting; the mean ± sample std over runs that differ only in the seed; what ran: dataset hash,
versions, commit, device, throughput; the configuration keys that differ between runs) and, with matplotlib,
``losses.png`` (ID and triplet loss), ``lr.png``, ``map.png`` (mAP of every setting) against the epoch and
``cmc.png`` (the last evaluation's CMC): runs overlaid, seeds of one configuration in one colour, labelled axes, the
legend beside the plot, never over the curves. Every file is written atomically.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastccreid.engine.runrecord import RUN_NAME, atomic_write_json, read_run
from fastccreid.engine.seeds import SEEDS_NAME, mean_std

# Configuration keys that do not make two runs different experiments (grouping for mean ± std).
NOT_THE_SETTING = ("seed", "save_dir", "resume", "gpu_devices", "nproc", "no_progress", "log_every", "num_workers")
LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class Run:
    """One run record with its folder, its label in the report, and its configuration group."""

    path: str
    record: dict[str, Any]
    label: str = ""
    group: int = 0
    group_label: str = ""

    @property
    def seed(self) -> Any:
        return self.record.get("seed")

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return list(self.record.get("epochs") or [])

    def result(self, which: str) -> dict[str, Any]:
        return ((self.record.get("results") or {}).get(which) or {}).get("settings") or {}


@dataclass
class ReportFiles:
    """What ``write_report`` wrote: the Markdown file and the PNGs (empty without matplotlib), and why not."""

    markdown: str
    plots: list[str] = field(default_factory=list)
    skipped_plots: str = ""


def run_folders(dirs: Sequence[str]) -> list[str]:
    """The run folders named by ``dirs``: a folder with ``run.json`` is one run, a ``--seeds`` SAVE_DIR (with
    ``seeds.json``) stands for its seed-N folders. Raises ValueError naming a folder that is neither."""
    if not dirs:
        raise ValueError("report: give at least one RUN_DIR (a --save_dir holding run.json, or a --seeds SAVE_DIR)")
    out: list[str] = []
    for d in dirs:
        if os.path.isfile(os.path.join(d, RUN_NAME)):
            out.append(d)
        elif os.path.isfile(os.path.join(d, SEEDS_NAME)):
            with open(os.path.join(d, SEEDS_NAME)) as f:
                seeds = json.load(f)
            found = [os.path.join(d, r["dir"]) for r in seeds.get("runs", [])
                     if os.path.isfile(os.path.join(d, r["dir"], RUN_NAME))]
            if not found:
                raise ValueError(f"{d}: {SEEDS_NAME} lists no seed folder with a {RUN_NAME}")
            out.extend(found)
        else:
            what = "no such folder" if not os.path.isdir(d) else f"no {RUN_NAME} or {SEEDS_NAME} in it"
            raise ValueError(f"RUN_DIR {d}: {what} (a run folder is a `fastccreid train` / `eval` --save_dir, or "
                             f"the SAVE_DIR of `train --seeds`)")
    unique: dict[str, str] = {}
    for p in out:  # a folder named twice (or through its --seeds SAVE_DIR too) is one run
        unique.setdefault(os.path.realpath(p), p)
    return list(unique.values())


def load_runs(dirs: Sequence[str]) -> list[Run]:
    """The runs of ``dirs`` (see ``run_folders``), labelled by their path below the folders' common parent and
    grouped by configuration (all keys but the seed, the folder and what does not change the result)."""
    folders = run_folders(dirs)
    runs = [Run(os.path.abspath(p), read_run(p)) for p in folders]
    base = os.path.commonpath([os.path.dirname(r.path) for r in runs])
    keys: list[str] = []
    for r in runs:
        r.label = os.path.relpath(r.path, base)
        cfg = {k: v for k, v in (r.record.get("config") or {}).items() if k not in NOT_THE_SETTING}
        key = json.dumps([r.record.get("kind"), cfg], sort_keys=True, default=str)
        if key not in keys:
            keys.append(key)
        r.group = keys.index(key)
    for g in range(len(keys)):
        members = [r for r in runs if r.group == g]
        if len(members) > 1:
            common = os.path.commonpath([m.path for m in members])
            name = os.path.relpath(common, base) if common != base else os.path.basename(common)
            label = f"{name} ({len(members)} runs)"
        else:
            label = members[0].label
        for m in members:
            m.group_label = label
    return runs


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}"


def settings_of(runs: Sequence[Run]) -> list[str]:
    names: list[str] = []
    for r in runs:
        for which in ("last", "best"):
            names.extend(n for n in r.result(which) if n not in names)
    return names


def markdown(runs: Sequence[Run], plots: Sequence[str] = ()) -> str:
    """The report's Markdown text (numbers in percent)."""
    settings = settings_of(runs)
    lines = ["# fastccreid report", "",
             f"{len(runs)} run(s). Numbers in %. *last*: the last evaluated epoch (no test-set selection, the number "
             "to report); *best*: the seed's rule, the epoch with the highest mAP of the first setting, chosen on "
             "the test set.", "", "## Results", "",
             "| run | seed | status | epochs | setting | last mAP | last R-1 | last mINP | best mAP | best R-1 "
             "| best mINP | best epoch |", "|" + "---|" * 12]
    for r in runs:
        best_epoch = ((r.record.get("results") or {}).get("best") or {}).get("epoch", "-")
        for s in settings:
            last, best = r.result("last").get(s, {}), r.result("best").get(s, {})
            lines.append(f"| {r.label} | {r.seed} | {r.record.get('status')} | {len(r.epochs)} | {s} | "
                         f"{_pct(last.get('mAP'))} | {_pct(last.get('rank1'))} | {_pct(last.get('mINP'))} | "
                         f"{_pct(best.get('mAP'))} | {_pct(best.get('rank1'))} | {_pct(best.get('mINP'))} | "
                         f"{best_epoch if best else '-'} |")
    groups = sorted({r.group for r in runs})
    multi = [g for g in groups if sum(r.group == g for r in runs) > 1]
    if multi:
        lines += ["", "## Mean ± std over seeds", "",
                  "Runs with the same configuration but the seed; sample standard deviation (n - 1).", "",
                  "| configuration | n | setting | last mAP | last R-1 | last mINP | best mAP | best R-1 | best mINP |",
                  "|" + "---|" * 9]
        for g in multi:
            members = [r for r in runs if r.group == g]
            for s in settings:
                cells = []
                for which in ("last", "best"):
                    for key in ("mAP", "rank1", "mINP"):
                        vals = [float(m.result(which)[s][key]) for m in members if key in m.result(which).get(s, {})]
                        if not vals:
                            cells.append("-")
                            continue
                        mean, std = mean_std(vals)
                        cells.append(f"{100 * mean:.2f} ± {'-' if std is None else f'{100 * std:.2f}'}")
                lines.append(f"| {members[0].group_label} | {len(members)} | {s} | " + " | ".join(cells) + " |")
    lines += ["", "## What ran", "", "| run | kind | dataset | images (train/query/gallery) | dataset sha256 | "
              "fastccreid | commit | torch | CUDA | device | processes | img/s | time |", "|" + "---|" * 13]
    for r in runs:
        env, ds = r.record.get("environment") or {}, r.record.get("dataset") or {}
        dev = env.get("devices") or {}
        git = env.get("git") or {}
        commit = (git.get("commit") or "")[:10] + (" (dirty)" if git.get("dirty") else "") if git else "-"
        splits = ds.get("splits") or {}
        sizes = "/".join(str((splits.get(k) or {}).get("images", "-")) for k in ("train", "query", "gallery"))
        ips = [float(e["images_per_s"]) for e in r.epochs if e.get("images_per_s")]
        device = ", ".join(dev.get("gpus") or []) or dev.get("cpu", "-")
        speed = f"{sum(ips) / len(ips):.1f}" if ips else "-"
        lines.append(f"| {r.label} | {r.record.get('kind')} | {ds.get('name', '-')} | {sizes} | "
                     f"{(ds.get('sha256') or '-')[:12]} | {env.get('fastccreid', '-')} | {commit} | "
                     f"{env.get('torch', '-')} | {env.get('cuda') or '-'} | {device} | {dev.get('processes', '-')} | "
                     f"{speed} | {float(r.record.get('elapsed_s', 0)):.0f} s |")
    configs = [r.record.get("config") or {} for r in runs]
    keys = sorted({k for c in configs for k in c} - {"save_dir"})
    differ = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
    if len(runs) > 1:
        lines += ["", "## Configuration differences", ""]
        if differ:
            lines += ["| key | " + " | ".join(r.label for r in runs) + " |", "|" + "---|" * (len(runs) + 1)]
            lines += [f"| {k} | " + " | ".join(str(c.get(k)) for c in configs) + " |" for k in differ]
        else:
            lines.append("None: every run has the same configuration (but its folder).")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{os.path.splitext(os.path.basename(p))[0]}]({os.path.basename(p)})"
                                        for p in plots]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ plots
def _styles(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One colour per configuration group, one line style per run within it."""
    seen: dict[int, int] = {}
    colors = [f"C{i % 10}" for i in range(10)]
    out = []
    for r in runs:
        k = seen.get(r.group, 0)
        seen[r.group] = k + 1
        out.append({"color": colors[r.group % 10], "linestyle": LINESTYLES[k % len(LINESTYLES)]})
    return out


def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def _curve_figure(runs: Sequence[Run], panels: Sequence[tuple[str, str, Any]], title: str, *, logy: bool = False,
                  marker: str = "o"):
    """One axis per panel (title, y label, value of an epoch entry or None); one line per run; the legend on the
    right of the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    styles = _styles(runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels) + 1.0, 4.0), dpi=100, squeeze=False)
    for ax, (name, ylabel, value) in zip(axes[0], panels, strict=True):
        for r, st in zip(runs, styles, strict=True):
            pts = [(e["epoch"], value(e)) for e in r.epochs if value(e) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=r.label, marker=marker, markersize=3, **st)  # markers: a 1-epoch run shows
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.tight_layout()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)  # beside the axes
    return fig


def plot_runs(runs: Sequence[Run], out: str) -> list[str]:
    """losses.png, lr.png, map.png (against the epoch) and cmc.png (the last evaluation) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    from fastccreid.viz import plot_cmc

    files = []
    fig = _curve_figure(runs, [("ID loss (label-smoothed CE, sum of five)", "loss", lambda e: e.get("id_loss")),
                               ("triplet loss (sum of five)", "loss", lambda e: e.get("tri_loss"))],
                        "training losses")
    files.append(_save(fig, os.path.join(out, "losses.png")))
    fig = _curve_figure(runs, [("learning rate", "lr", lambda e: e.get("lr"))], "learning rate", logy=True)
    files.append(_save(fig, os.path.join(out, "lr.png")))
    settings = settings_of(runs)
    if settings:
        def m_ap(setting: str):
            return lambda e: 100 * e["eval"][setting]["mAP"] if setting in (e.get("eval") or {}) else None

        fig = _curve_figure(runs, [(s, "mAP (%)", m_ap(s)) for s in settings], "mAP at each evaluation")
        files.append(_save(fig, os.path.join(out, "map.png")))
        curves = {f"{r.label} {s}": r.result("last")[s]["cmc"] for r in runs for s in settings
                  if r.result("last").get(s, {}).get("cmc")}
        if curves:
            fd, tmp = tempfile.mkstemp(prefix=".cmc.png.", suffix=".png", dir=out)
            os.close(fd)
            try:
                plot_cmc(curves, tmp, title="CMC at the last evaluation", max_rank=20)
                os.replace(tmp, os.path.join(out, "cmc.png"))
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            files.append(os.path.join(out, "cmc.png"))
    return files


def write_report(dirs: Sequence[str], out: str) -> ReportFiles:
    """Read the runs of ``dirs`` and write ``report.md`` and the plots into ``out``."""
    runs = load_runs(dirs)
    os.makedirs(out, exist_ok=True)
    plots: list[str] = []
    skipped = ""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        skipped = "matplotlib is not installed (pip install matplotlib): no PNG plots"
    else:
        plots = plot_runs(runs, out)
    path = os.path.join(out, "report.md")
    fd, tmp = tempfile.mkstemp(prefix=".report.md.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "w") as f:
        f.write(markdown(runs, plots))
    os.replace(tmp, path)
    atomic_write_json({"runs": [{"label": r.label, "path": r.path, "group": r.group_label} for r in runs]},
                      os.path.join(out, "report.json"))
    return ReportFiles(path, plots, skipped)


def run_report(args) -> int:
    """``fastccreid report RUN_DIR... [--out DIR]``; exit 0, or 2 on a folder that holds no run."""
    try:
        files = write_report(args.run_dirs, args.out)
    except ValueError as exc:
        print(f"fastccreid report: error: {exc}", file=sys.stderr)
        return 2
    with open(files.markdown) as f:
        text = f.read()
    print(text.split("## What ran")[0].rstrip())
    if files.skipped_plots:
        print(f"fastccreid report: {files.skipped_plots}", file=sys.stderr)
    for p in [files.markdown, *files.plots]:
        print(f"wrote {p}")
    return 0
