"""The floor for the web service's speed: Flask answering every POST /predict with one constant JSON
answer, without reading the body, validating, predicting or counting anything. Served under the same
gunicorn settings as web-service/predict.py, it is what gunicorn and Flask alone cost per request
(`python -m benchmarks web` puts ours next to it)."""

from __future__ import annotations

import json

from flask import Flask

ANSWER = json.dumps({"duration": 25.0, "model_version": "m-floor", "registered_version": None})

app = Flask(__name__)


@app.post("/predict")
def predict():
    return app.response_class(ANSWER, content_type="application/json")
