"""The homework's questions, their options, and the answer key, computed, never typed.

    python homework/answers.py                 # regenerate homework/key-tlc.json (real TLC months)
    python homework/answers.py --variant synthetic   # homework/key-synthetic.json (no network needed)

The key is computed in-process from the project's library (read_month, the fixed model, the
batch writer), a different path from the one a learner takes (papermill, scripts/score.py, the
web service, the Lambda handler). solution.ipynb takes the learner's path; the tests check that
both agree and that the committed keys equal freshly computed ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL_DIR = HERE / "model"
MODEL_SHA256 = "8c2b16dcfcbd4458fd7ad4fc7c4bb43e41638591a7e78029282a1abb6831c7ee"  # of model/model.pkl
EXAMPLE_RIDE = {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40.0}  # the course's
SAMPLE_EVENT = ROOT / "streaming" / "events" / "kinesis-sample.json"
BACKFILL_MONTHS = [(2021, m) for m in range(1, 6)]
VARIANTS = ("tlc", "synthetic")

EXPORT_COMMANDS = {
    "A": "jupyter nbconvert --to script notebooks/score.ipynb --output-dir {out}",
    "B": "jupyter nbconvert --to script --TemplateExporter.exclude_code_cell=True notebooks/score.ipynb --output-dir {out}",
    "C": "jupyter nbconvert --to notebook --execute notebooks/score.ipynb --output-dir {out}",
    "D": "jupyter nbconvert --to script --TagRemovePreprocessor.enabled=True "
         "--TagRemovePreprocessor.remove_cell_tags notebook-only --TemplateExporter.exclude_markdown=True "
         "--TemplateExporter.exclude_input_prompt=True notebooks/score.ipynb --output-dir {out}",
}

# Options per question and variant (in homework/README.md too; a test checks they agree).
# Numeric options: the closest one is the answer.
OPTIONS = {
    "q1": {"tlc": [3.2, 6.4, 9.5, 12.7], "synthetic": [2.9, 5.8, 8.7, 11.6]},
    "q2": {"tlc": [0.8, 1.6, 3.3, 6.6], "synthetic": [1.2, 2.5, 5.0, 10.0]},
    "q3": {"tlc": list(EXPORT_COMMANDS), "synthetic": list(EXPORT_COMMANDS)},
    "q4": {"tlc": ["629cada3", "0f6a0c3e", "5d2c6f8e", "9e8d7c6b"], "synthetic": ["629cada3", "0f6a0c3e", "5d2c6f8e", "9e8d7c6b"]},
    "q5": {"tlc": [11.9, 14.4, 16.9, 19.4], "synthetic": [16.5, 19.0, 21.5, 24.0]},
    "q6": {"tlc": [5.8, 15.8, 25.8, 35.8], "synthetic": [5.8, 15.8, 25.8, 35.8]},
    "q7": {"tlc": [12.3, 16.4, 20.5, 24.6], "synthetic": [12.3, 16.4, 20.5, 24.6]},
    "q8": {"tlc": [400_038, 411_527, 450_000, 500_000], "synthetic": [300_000, 350_000, 400_038, 450_000]},
}


def model_sha256() -> str:
    return hashlib.sha256((MODEL_DIR / "model.pkl").read_bytes()).hexdigest()


def fixed_model():
    """The homework's model, after checking it is the published one."""
    from ride_duration.model import load_model

    actual = model_sha256()
    if actual != MODEL_SHA256:
        raise SystemExit(f"homework/model/model.pkl has sha256 {actual}, not the published {MODEL_SHA256}")
    return load_model(str(MODEL_DIR))


def closest(options: list, value) -> str:
    """The letter of the option closest to value (exact match for text options)."""
    letters = "ABCD"
    if isinstance(value, str):
        return letters[options.index(value)] if value in options else ""
    return letters[min(range(len(options)), key=lambda i: abs(options[i] - value))]


def scored_month(model, year: int, month: int, synthetic: bool, output: Path):
    """One month scored and written the batch way (the same writer as scripts/score.py)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import score

    score.score_month("green", year, month, model, str(output), synthetic=synthetic)
    from ride_duration.batch import read_output

    return read_output(str(output))


def lock_sdist_hash(package: str = "scikit-learn") -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    entry = next(p for p in lock["package"] if p["name"] == package)
    return entry["sdist"]["hash"].split(":", 1)[1][:8]


def export_command() -> str:
    """The option whose command reproduces `make export`'s scripts/score.py (header aside)."""
    expected = (ROOT / "scripts" / "score.py").read_text().split("\n", 2)[2].strip()
    jupyter = Path(sys.executable).with_name("jupyter")
    for letter, command in EXPORT_COMMANDS.items():
        with tempfile.TemporaryDirectory() as out:
            argv = [str(jupyter), *command.format(out=out).split()[1:]]
            subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=300)
            produced = Path(out) / "score.py"
            if produced.exists() and normalise(produced.read_text()) == normalise(expected):
                return letter
    raise RuntimeError("no option reproduces make export")


def normalise(script: str) -> str:
    lines = [line for line in script.splitlines() if line.strip() and not line.startswith(("#!", "# coding"))]
    return "\n".join(lines)


def compute_key(variant: str) -> dict:
    """Every answer, computed from the project's library."""
    import numpy as np

    from ride_duration.data import read_month
    from ride_duration.features import FastPredictor, ride_features

    synthetic = variant == "synthetic"
    model = fixed_model()
    event = json.loads(SAMPLE_EVENT.read_text())
    import base64

    sample = json.loads(base64.b64decode(event["Records"][0]["kinesis"]["data"]))
    with tempfile.TemporaryDirectory() as folder:
        march = Path(folder) / "green-2021-03.parquet"
        march_rows = scored_month(model, 2021, 3, synthetic, march)
        april = scored_month(model, 2021, 4, synthetic, Path(folder) / "green-2021-04.parquet")
        values = {
            "q1": float(np.std(march_rows["predicted_duration"].to_numpy(), ddof=1)),
            "q2": march.stat().st_size / 1e6,
            "q3": None,
            "q4": lock_sdist_hash(),
            "q5": float(april["predicted_duration"].mean()),
            "q6": float(model.pipeline.predict([ride_features(EXAMPLE_RIDE)])[0]),
            "q7": float(FastPredictor(model.pipeline).predict_rides([sample["ride"]])[0]),
            "q8": sum(len(read_month("green", y, m, synthetic=synthetic)) for y, m in BACKFILL_MONTHS),
        }
    values["q3"] = export_command()
    answers = {}
    for question, value in values.items():
        options = OPTIONS[question][variant]
        letter = value if question == "q3" else closest(options, value)
        answers[question] = {"value": value, "answer": letter}
    return {"variant": variant, "model_id": model.model_id, "model_sha256": MODEL_SHA256, "answers": answers}


def key_path(variant: str) -> Path:
    return HERE / f"key-{variant}.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, default="tlc")
    args = parser.parse_args(argv)
    key = compute_key(args.variant)
    key_path(args.variant).write_text(json.dumps(key, indent=2) + "\n")
    print(json.dumps(key, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
