"""The course's web service, for the benchmark only (DataTalksClub mlops-zoomcamp, module 4,
web-service/predict.py): a pickled (DictVectorizer, model) pair, a feature dict per request,
`dv.transform`, `model.predict`, `jsonify`. The only change: the pickle's path comes from
COURSE_MODEL_FILE instead of the working directory. Not part of the tutorial's service.
"""

import os
import pickle

from flask import Flask, jsonify, request

with open(os.environ.get("COURSE_MODEL_FILE", "lin_reg.bin"), "rb") as f_in:
    (dv, model) = pickle.load(f_in)  # written by benchmarks/bench_web.py


def prepare_features(ride):
    features = {}
    features["PU_DO"] = "%s_%s" % (ride["PULocationID"], ride["DOLocationID"])
    features["trip_distance"] = ride["trip_distance"]
    return features


def predict(features):
    X = dv.transform(features)
    preds = model.predict(X)
    return float(preds[0])


app = Flask("duration-prediction")


@app.route("/predict", methods=["POST"])
def predict_endpoint():
    ride = request.get_json()

    features = prepare_features(ride)
    pred = predict(features)

    result = {"duration": pred}

    return jsonify(result)
