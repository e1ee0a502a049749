"""What a model artifact must be before anything in it runs.

Unpickling a file can run any code its author chose, so a model is checked in three ways first:

- its pickled file has the sha256 recorded when it was logged (tag `model_sha256` on the logged model and on
  each registered version), or given in MODEL_SHA256 for an artifact URI; the hash is of the pickled model file's
  bytes, `model.pkl` in an MLflow folder, what `sha256sum model.pkl` prints;
- the file MLmodel names is inside the model's folder;
- the pickle names only the classes and functions a ride pipeline is made of (`ALLOWED_GLOBALS`): any other
  (os.system, a class of another library) is refused by name, before it is even imported.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

from ride_duration.features import CLIP_DISTANCE, LINEAR_REGRESSORS

MODEL_SHA256_TAG = "model_sha256"

# numpy's arrays, scalars and dtypes pickle through these; numpy 1 named its core "numpy.core".
NUMPY_GLOBALS = {
    (module, name)
    for module, names in {
        "numpy": ("ndarray", "dtype", "float64", "float32", "int64", "int32"),
        "numpy._core.multiarray": ("_reconstruct", "scalar"),
        "numpy.core.multiarray": ("_reconstruct", "scalar"),
        "numpy._core.numeric": ("_frombuffer",),
        "numpy.core.numeric": ("_frombuffer",),
    }.items()
    for name in names
}
# The estimators the project's pipelines are made of: DictVectorizer, its regressors (linear ones, the
# course's random forest and its trees), the distance cap; plus how protocol 2 pickles bytes.
PIPELINE_CLASSES = {
    "sklearn.pipeline.Pipeline",
    "sklearn.feature_extraction._dict_vectorizer.DictVectorizer",
    *LINEAR_REGRESSORS,
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._tree.Tree",
    CLIP_DISTANCE,
}
ALLOWED_GLOBALS = NUMPY_GLOBALS | {tuple(name.rsplit(".", 1)) for name in PIPELINE_CLASSES} | {("_codecs", "encode")}


class UntrustedModel(Exception):
    """A model artifact that fails a check; the message says which, in one line."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(data: bytes, expected: str, what: str) -> None:
    """UntrustedModel unless data hashes to `expected` (hex digits, either case)."""
    actual = sha256_of(data)
    if actual != expected.strip().lower():
        raise UntrustedModel(f"{what} has sha256 {actual}, not the expected {expected.strip()}: refused unread")


def inside(folder: Path, relative: str) -> Path:
    """folder / relative, refused if it leads out of folder (`../x.pkl`, an absolute path, a symlink out)."""
    root = folder.resolve()
    path = (folder / relative).resolve()
    if not path.is_relative_to(root) or path == root:
        raise UntrustedModel(f"MLmodel names {relative!r}, which is not a file inside the model folder")
    return path


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only ALLOWED_GLOBALS; anything else raises UntrustedModel naming it, before it is imported."""

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UntrustedModel(f"the pickle names {module}.{name}, which is not part of a ride pipeline: refused")
        return super().find_class(module, name)


def unpickle(data: bytes):
    """The object pickled in data, through RestrictedUnpickler."""
    return RestrictedUnpickler(io.BytesIO(data)).load()
