"""Ride -> features, written once for training, the web service, the Lambda handler and batch.

A ride (ride_duration.rides) is {"PULocationID", "DOLocationID", "trip_distance"}. The model sees
{"PU_DO": "<PU>_<DO>", "trip_distance": <miles>} through a DictVectorizer inside its Pipeline.

A linear model may cap the distance first (`ClipDistance`): its minutes per mile hold for the
distances it was trained on, not for the hundreds of thousands of miles some TLC records claim.

`FastPredictor` gives the same numbers as `pipeline.predict` without building a dict per ride: it
applies the same cap, builds the DictVectorizer's sparse matrix straight from integer codes with
the vectorizer's own vocabulary, and hands it to the pipeline's last step. Pipelines it does not
recognise fall back to `pipeline.predict`. For one ride and a linear regressor, `predict_one` skips numpy and
scikit-learn altogether (their per-call checks are most of a web request's time) and does
the same sum in plain floats.
"""

from __future__ import annotations

import numpy as np

from ride_duration.rides import MAX_LOCATION_ID


def ride_features(ride: dict) -> dict:
    """The model's input for one ride: PU_DO as a string (never an int) and the distance."""
    return {"PU_DO": f"{ride['PULocationID']}_{ride['DOLocationID']}", "trip_distance": ride["trip_distance"]}


def frame_features(df) -> list[dict]:
    """The course's way for a DataFrame: one feature dict per row (slow; kept as the reference)."""
    pu_do = df["PULocationID"].astype(str) + "_" + df["DOLocationID"].astype(str)
    return [
        {"PU_DO": key, "trip_distance": distance} for key, distance in zip(pu_do.tolist(), df["trip_distance"].tolist())
    ]


class ClipDistance:
    """A pipeline step before the DictVectorizer: trip_distance above max_miles becomes max_miles.

    A plain class, not a scikit-learn one, so that this module imports without scikit-learn; it has
    what a Pipeline step needs (fit, transform, get_params, set_params). It learns nothing.
    """

    def __init__(self, max_miles: float):
        self.max_miles = max_miles

    def fit(self, features, y=None):
        return self

    def transform(self, features: list[dict]) -> list[dict]:
        return [{**f, "trip_distance": min(f["trip_distance"], self.max_miles)} for f in features]

    def get_params(self, deep: bool = True) -> dict:
        return {"max_miles": self.max_miles}

    def set_params(self, **params):
        if set(params) - {"max_miles"}:
            raise ValueError(f"ClipDistance has only max_miles, not {sorted(set(params) - {'max_miles'})}")
        self.__dict__.update(params)
        return self

    def __repr__(self) -> str:
        return f"ClipDistance(max_miles={self.max_miles!r})"


CLIP_DISTANCE = f"{__name__}.ClipDistance"

# Regressors whose predict on sparse input is safe_sparse_dot(X, coef_) + intercept_.
LINEAR_REGRESSORS = {
    "sklearn.linear_model._base.LinearRegression",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.linear_model._coordinate_descent.Lasso",
    "sklearn.linear_model._coordinate_descent.ElasticNet",
}


def class_name(obj) -> str:
    """The qualified name of obj's class, as pickle records it (a stand-in keeps the original's)."""
    return getattr(obj, "pickled_class", None) or f"{type(obj).__module__}.{type(obj).__qualname__}"


class FastPredictor:
    """pipeline.predict for rides, without a dict per ride; identical answers.

    Recognises Pipeline([DictVectorizer, <estimator taking sparse input>]) fitted on
    ride_features, with or without a ClipDistance step first; anything else is served by
    pipeline.predict on feature dicts.
    """

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.max_miles = None  # the distance cap of a ClipDistance step, if the pipeline has one
        self.fast = self._compile(pipeline)
        self.linear = self.fast and self._compile_linear()

    def _compile(self, pipeline) -> bool:
        if class_name(pipeline) != "sklearn.pipeline.Pipeline":
            return False
        steps = [step for _, step in pipeline.steps]
        if len(steps) == 3 and class_name(steps[0]) == CLIP_DISTANCE:
            self.max_miles = steps.pop(0).max_miles
        if len(steps) != 2:
            return False
        vectorizer, self.estimator = steps
        if class_name(vectorizer) != "sklearn.feature_extraction._dict_vectorizer.DictVectorizer":
            return False
        vocabulary = vectorizer.vocabulary_
        sep = vectorizer.separator
        if set(vocabulary) - {"trip_distance"} and not all(
            name == "trip_distance" or name.startswith(f"PU_DO{sep}") for name in vocabulary
        ):
            return False
        self.n_features = len(vocabulary)
        self.dtype = vectorizer.dtype
        self.distance_column = vocabulary.get("trip_distance", -1)
        # pair_column[PU, DO] = the column of "PU_DO=PU_DO", or -1 where the pair was never seen
        self.pair_column = np.full((MAX_LOCATION_ID + 1, MAX_LOCATION_ID + 1), -1, dtype=np.int32)
        for name, column in vocabulary.items():
            if name == "trip_distance":
                continue
            pu, _, do = name[len("PU_DO") + len(sep) :].partition("_")
            if not (pu.isdigit() and do.isdigit()) or max(int(pu), int(do)) > MAX_LOCATION_ID:
                return False
            self.pair_column[int(pu), int(do)] = column
        return True

    def _compile_linear(self) -> bool:
        """Coefficients as plain floats, for linear regressors whose predict is X @ coef_ + intercept_."""
        coef = getattr(self.estimator, "coef_", None)
        if class_name(self.estimator) not in LINEAR_REGRESSORS or np.ndim(coef) != 1:
            return False
        if np.ndim(self.estimator.intercept_) != 0 or self.dtype != np.float64:
            return False
        coef = np.asarray(coef, dtype=np.float64)
        self.pair_coef_column = np.append(coef, 0.0)  # coef by column, and 0.0 for "no pair column"
        self.intercept = float(self.estimator.intercept_)
        self.distance_coef = float(coef[self.distance_column]) if self.distance_column >= 0 else 0.0
        pu, do = np.nonzero(self.pair_column >= 0)
        self.pair_coef = dict(zip(zip(pu.tolist(), do.tolist()), coef[self.pair_column[pu, do]].tolist()))
        return True

    def predict_one(self, ride: dict) -> float:
        """The prediction for one validated ride, equal to pipeline.predict (same sum, same order).

        The sparse row holds 1.0 at the PU_DO column (if that pair was seen) then the distance, so
        X @ coef_ + intercept_ is (coef[pair] + distance * coef[trip_distance]) + intercept_.
        """
        pu, do, distance = ride["PULocationID"], ride["DOLocationID"], ride["trip_distance"]
        if not self.linear:
            return float(self.predict_arrays([pu], [do], [distance])[0])
        if self.max_miles is not None:
            distance = min(distance, self.max_miles)
        return self.pair_coef.get((pu, do), 0.0) + distance * self.distance_coef + self.intercept

    def pair_columns(self, pu, do) -> np.ndarray:
        """The PU_DO column of each ride (int32), or -1 for a pair never seen in training."""
        pu = np.asarray(pu)
        do = np.asarray(do)
        in_range = (pu >= 0) & (pu <= MAX_LOCATION_ID) & (do >= 0) & (do <= MAX_LOCATION_ID)
        # One flat take on the (MAX_LOCATION_ID + 1)^2 table; out-of-range rides look up cell 0 (-1).
        cell = np.where(in_range, pu.astype(np.int32) * (MAX_LOCATION_ID + 1) + do.astype(np.int32), 0)
        return self.pair_column.ravel().take(cell)

    def matrix(self, pu, do, distance):
        """The DictVectorizer's output for these rides, built from integer codes."""
        import scipy.sparse as sp

        distance = np.asarray(distance, dtype=np.float64)
        pair = self.pair_columns(pu, do)
        has_pair = pair >= 0
        has_distance = self.distance_column >= 0
        per_row = has_pair.astype(np.int32) + int(has_distance)
        indptr = np.zeros(pair.size + 1, dtype=np.int32)
        np.cumsum(per_row, out=indptr[1:])
        # Same order as DictVectorizer.transform: PU_DO first, then trip_distance.
        indices = np.empty(indptr[-1], dtype=np.int32)
        values = np.empty(indptr[-1], dtype=self.dtype)
        starts = indptr[:-1]
        indices[starts[has_pair]] = pair[has_pair]
        values[starts[has_pair]] = 1
        if has_distance:
            last = indptr[1:] - 1
            indices[last] = self.distance_column
            values[last] = distance
        return sp.csr_matrix((values, indices, indptr), shape=(pair.size, self.n_features))

    def linear_predict(self, pu, do, distance) -> np.ndarray:
        """X @ coef_ + intercept_ for linear regressors, in numpy, without building X.

        scipy's sparse product sums each row from 0.0 in the row's order, the PU_DO column
        (value 1.0) then trip_distance, and the regressor then adds intercept_: the same
        operations in the same order, so the same bits.
        """
        total = self.pair_coef_column.take(self.pair_columns(pu, do))  # -1 (unseen pair) takes the last: 0.0
        total += 0.0  # the row sum starts at 0.0: turns a -0.0 coefficient into 0.0, as scipy does
        if self.distance_column >= 0:
            total += np.asarray(distance, dtype=np.float64) * self.distance_coef
        total += self.estimator.intercept_
        return total

    def predict_arrays(self, pu, do, distance) -> np.ndarray:
        """Predictions for the ride's three fields as arrays (predict_columns and predict_rides unpack them)."""
        if self.fast and self.max_miles is not None:
            distance = np.minimum(np.asarray(distance, dtype=np.float64), self.max_miles)
        if self.linear:
            return self.linear_predict(pu, do, distance)
        if not self.fast:
            pu_do = [f"{a}_{b}" for a, b in zip(np.asarray(pu).tolist(), np.asarray(do).tolist())]
            dicts = [{"PU_DO": k, "trip_distance": d} for k, d in zip(pu_do, np.asarray(distance).tolist())]
            return np.asarray(self.pipeline.predict(dicts), dtype=np.float64)
        return np.asarray(self.estimator.predict(self.matrix(pu, do, distance)), dtype=np.float64)

    def predict_columns(self, columns) -> np.ndarray:
        """Predictions for columns of rides: anything indexed by the ride's fields (a DataFrame, a dict of arrays)."""
        return self.predict_arrays(columns["PULocationID"], columns["DOLocationID"], columns["trip_distance"])

    def predict_rides(self, rides: list[dict]) -> np.ndarray:
        """Predictions for validated rides (see ride_duration.rides.validate_ride)."""
        return self.predict_arrays(
            [r["PULocationID"] for r in rides],
            [r["DOLocationID"] for r in rides],
            [r["trip_distance"] for r in rides],
        )
