"""Draw the tutorial's diagrams into images/ (`make images`); with --plots, also redraw the batch plots.

    python scripts/make_images.py                    # the diagrams: images/deployment-modes.png, images/model-path.png
    python scripts/make_images.py --output-dir /tmp/x
    python scripts/make_images.py --plots            # and notebook 05's plots from the registered model

The diagrams are drawn with matplotlib alone (no network, no graphviz). The plots come from the notebook
that makes them: --plots runs notebooks/05-batch.ipynb with save_images=True on real TLC months
(TAXI_DATA_DIR), scoring them with `ride-duration@production`, the model `make tutorial` trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ride_duration.settings import PROJECT_ROOT as ROOT

IMAGES = ROOT / "images"

# One colour per kind of thing, the same in every diagram.
COLOURS = {
    "data": "#dbe9f6",  # files and streams of rides
    "code": "#fde3c8",  # our code: notebooks and exported scripts
    "mlflow": "#e3d7ef",  # tracking and registry
    "client": "#e2efda",  # who asks, who reads the answers
}


def box(ax, x: float, y: float, text: str, kind: str, width: float, height: float = 0.8) -> dict:
    """A rounded box centred on (x, y), in inches; returns its edges for arrows."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.02,rounding_size=0.1",
            facecolor=COLOURS[kind],
            edgecolor="#555555",
            linewidth=1,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=9, linespacing=1.35)
    return {
        "x": x,
        "y": y,
        "left": x - width / 2,
        "right": x + width / 2,
        "top": y + height / 2,
        "bottom": y - height / 2,
    }


def arrow(ax, start: tuple[float, float], end: tuple[float, float], label: str = "", below: bool = False) -> None:
    """An arrow from start to end, with an optional label above (or below) its middle."""
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops={"arrowstyle": "-|>", "color": "#333333", "linewidth": 1.2, "shrinkA": 2, "shrinkB": 2},
    )
    if label:
        ax.text(
            (start[0] + end[0]) / 2,
            (start[1] + end[1]) / 2 + (-0.08 if below else 0.08),
            label,
            ha="center",
            va="top" if below else "bottom",
            fontsize=8,
            color="#333333",
        )


def link(ax, a: dict, b: dict, label: str = "") -> None:
    """An arrow from box a's right edge to box b's left edge."""
    arrow(ax, (a["right"], a["y"]), (b["left"], b["y"]), label)


def new_figure(width: float, height: float):
    """A blank figure whose data units are inches, so that text and boxes keep their sizes."""
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(width, height))
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, width), ylim=(0, height))
    ax.axis("off")
    return figure, ax


def legend(ax, kinds: list[str], x: float, y: float) -> None:
    from matplotlib.patches import Patch

    names = {
        "data": "rides: files and streams",
        "code": "our code",
        "mlflow": "MLflow",
        "client": "who asks, who reads",
    }
    ax.legend(
        handles=[Patch(facecolor=COLOURS[k], edgecolor="#555555", label=names[k]) for k in kinds],
        loc="lower left",
        bbox_to_anchor=(x, y),
        bbox_transform=ax.transData,
        ncol=len(kinds),
        fontsize=8,
        frameon=False,
    )


def header(ax, y: float, title: str, text: str) -> None:
    ax.text(0.2, y, title, fontsize=12, fontweight="bold", va="baseline")
    ax.text(1.9, y, text, fontsize=9, color="#444444", va="baseline")


def deployment_modes():
    """The three deployment modes, one row each: who asks, what runs, where the answers go."""
    figure, ax = new_figure(13, 7.4)
    ax.text(0.2, 7.0, "One model, three ways to deploy it", fontsize=14)

    header(
        ax,
        6.2,
        "Batch",
        "a job on a schedule: reads a month, writes a file, stops. Nobody waits; the answers are read later.",
    )
    month = box(ax, 1.7, 5.3, "TLC month\ngreen_tripdata_2021-03.parquet", "data", width=2.9)
    job = box(ax, 6.2, 5.3, "scripts/score.py\n(papermill, cron or Prefect)", "code", width=2.6)
    scored = box(ax, 10.8, 5.3, "output/green/2021-03.parquet\nride_id, prediction, model version", "data", width=3.4)
    link(ax, month, job, "a row group at a time")
    link(ax, job, scored, "written atomically")

    header(ax, 4.1, "Web service", "always on: one request, one answer. A client is waiting: milliseconds.")
    client = box(ax, 1.7, 3.2, "client\n(an app, another service)", "client", width=2.6)
    service = box(ax, 6.2, 3.2, "gunicorn + Flask\nweb-service/predict.py", "code", width=2.6)
    watcher = box(ax, 10.8, 3.2, "monitoring\nGET /health, GET /metrics", "client", width=2.8)
    arrow(ax, (client["right"], 3.4), (service["left"], 3.4), "POST /predict  a ride")
    arrow(ax, (service["left"], 3.0), (client["right"], 3.0), "duration, model_version", below=True)
    arrow(ax, (watcher["left"], 3.2), (service["right"], 3.2), "Prometheus scrapes")

    header(ax, 2.0, "Streaming", "always on: events in, predictions out. Nobody waits on the reply: seconds.")
    producer = box(ax, 1.0, 1.1, "producer\n(ride events)", "client", width=1.6)
    events = box(ax, 3.5, 1.1, "Kinesis\nride_events", "data", width=1.9)
    handler = box(ax, 6.5, 1.1, "Lambda\nstreaming/lambda_function.py", "code", width=2.6)
    predictions = box(ax, 9.7, 1.1, "Kinesis\nride_predictions", "data", width=2.1)
    consumer = box(ax, 12.1, 1.1, "consumer", "client", width=1.4)
    link(ax, producer, events)
    link(ax, events, handler, "in batches")
    link(ax, handler, predictions, "put_records")
    link(ax, predictions, consumer)

    legend(ax, ["data", "code", "client"], 0.1, 0.0)
    return figure


def model_path():
    """From training to each deployment: notebook 01 trains, 02 registers, every deployment loads the alias."""
    figure, ax = new_figure(13, 6.4)
    ax.text(0.2, 6.0, "A model's path: trained, registered, then loaded by its alias everywhere", fontsize=14)
    months = box(
        ax, 1.7, 4.9, "TLC months\ngreen 2021-01: training\ngreen 2021-02: validation", "data", width=2.9, height=1.0
    )
    train = box(
        ax,
        5.7,
        4.9,
        "notebooks/01-train\nDictVectorizer + regressor\nas one Pipeline, per run",
        "code",
        width=3.0,
        height=1.0,
    )
    runs = box(
        ax,
        10.3,
        4.9,
        "MLflow runs\nparameters, val_rmse, a plot\nand the pipeline (model m-...)",
        "mlflow",
        width=3.2,
        height=1.0,
    )
    link(ax, months, train, "fit")
    link(ax, train, runs, "log_model")

    registry = box(
        ax, 6.5, 2.9, "MLflow registry: ride-duration\nalias @production -> version N", "mlflow", width=3.6, height=0.9
    )
    arrow(ax, (runs["x"], runs["bottom"]), (registry["right"], registry["y"]))
    ax.text(
        9.75, 3.45, "notebooks/02-register:\nthe best run by validation RMSE", fontsize=8, color="#333333", va="center"
    )
    ax.text(
        registry["x"] + 1.9,
        registry["bottom"] - 0.12,
        "loaded as models:/ride-duration@production\nor by its artifact URI (s3://...)",
        fontsize=8,
        color="#333333",
        va="top",
    )

    targets = [
        (2.0, "batch: scripts/score.py\n(from notebooks/score.ipynb)"),
        (6.5, "web service: web-service/predict.py\n(from notebooks/03-web-service)"),
        (11.0, "streaming: streaming/lambda_function.py\n(from notebooks/04-streaming)"),
    ]
    for x, text in targets:
        target = box(ax, x, 0.9, text, "code", width=3.6)
        arrow(ax, (registry["x"], registry["bottom"]), (target["x"], target["top"]))
    legend(ax, ["data", "code", "mlflow"], 0.1, 0.0)
    return figure


DIAGRAMS = {"deployment-modes.png": deployment_modes, "model-path.png": model_path}


def draw_diagrams(output_dir: Path) -> list[Path]:
    """Write every diagram as a PNG into output_dir; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in DIAGRAMS.items():
        figure = draw()
        path = output_dir / name
        figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
        plt.close(figure)
        written.append(path)
    return written


def redraw_plots() -> Path:
    """Run notebook 05 with save_images=True: it writes its plots into images/ from real months only."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from run_notebooks import run_notebook

    from ride_duration.notebooks import used_synthetic_data

    executed = run_notebook("05-batch", {"save_images": True, "synthetic": False})
    if used_synthetic_data(executed):
        raise RuntimeError(f"{executed} used synthetic data; plots are only saved from real TLC months")
    return executed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output-dir", type=Path, default=IMAGES, help="where to write the diagrams (default: images/)"
    )
    parser.add_argument(
        "--plots",
        action="store_true",
        help="also run notebooks/05-batch.ipynb with save_images=True (needs real TLC months and "
        "the model make tutorial registered)",
    )
    args = parser.parse_args(argv)
    for path in draw_diagrams(args.output_dir):
        print(f"wrote {path}")
    if args.plots:
        print(f"plots: executed copy {redraw_plots()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
