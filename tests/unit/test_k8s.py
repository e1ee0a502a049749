"""web-service/k8s/: the manifests are valid Kubernetes objects, and they point at what the image serves:
the probes at a route the app answers 200 on, the ports at the port gunicorn binds, the environment at
real settings, the selectors, the autoscaler and the disruption budget at the Deployment's pods."""

from __future__ import annotations

import ast
import dataclasses
import re
import sys

import kubernetes_validate
import pytest
import yaml
from gunicorn.config import GracefulTimeout

from ride_duration.serving import ModelService
from ride_duration.settings import Settings, environment_names
from tests.helpers import ROOT, stand_in_model

sys.path.insert(0, str(ROOT / "web-service"))
import predict  # web-service/ is not a package; importing predict builds no app and loads no model

K8S = ROOT / "web-service" / "k8s"
# The oldest Kubernetes the manifests are for (web-service/README.md) and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.34", kubernetes_validate.utils.latest_version()]


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def resources() -> dict[str, dict]:
    """Every object kustomization.yaml lists, by kind."""
    objects = [
        document
        for name in kustomization()["resources"]
        for document in yaml.safe_load_all((K8S / name).read_text())
        if document
    ]
    by_kind = {document["kind"]: document for document in objects}
    assert len(by_kind) == len(objects), "one object of each kind"
    return by_kind


DEPLOYMENT = resources()["Deployment"]
POD = DEPLOYMENT["spec"]["template"]
[CONTAINER] = POD["spec"]["containers"]
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def container_port(name_or_number) -> int:
    """The container's port a probe or a Service names (by name or number)."""
    ports = {port["name"]: port["containerPort"] for port in CONTAINER["ports"]}
    assert name_or_number in ports or name_or_number in ports.values(), f"no container port {name_or_number!r}"
    return ports.get(name_or_number, name_or_number)


def pod_environment() -> dict[str, str | None]:
    """The environment the container gets from the manifests (None: from a Secret)."""
    config_maps = {resources()["ConfigMap"]["metadata"]["name"]: resources()["ConfigMap"]["data"]}
    environment = {}
    for source in CONTAINER.get("envFrom", []):
        environment.update(config_maps[source["configMapRef"]["name"]])
    for variable in CONTAINER.get("env", []):
        environment[variable["name"]] = variable.get("value")
    return environment


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_a_valid_object_of_its_kubernetes_version(version):
    """kubernetes-validate --strict, from its own offline schemas; an unknown kind is an error too
    (the command only warns)."""
    for kind, document in resources().items():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{kind} is not valid Kubernetes {version}: {path}: {error.message}")


def test_kustomization_lists_every_manifest_and_names_the_image():
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization()["resources"]) == manifests
    assert [image["name"] for image in kustomization()["images"]] == [CONTAINER["image"].split(":")[0]]


def test_the_probes_ask_a_route_that_answers_200_without_the_api_key():
    """/health as the kubelet asks it: a GET with no X-API-Key, to a service that requires one."""
    keyed = dataclasses.replace(Settings(), api_key="s3cret-key")
    client = predict.create_app(keyed, ModelService.for_model(stand_in_model())).test_client()
    for probe in PROBES:
        get = CONTAINER[probe]["httpGet"]
        response = client.get(get["path"])
        assert response.status_code == 200, f"{probe}: GET {get['path']} -> {response.status_code}"
        assert response.get_json()["status"] == "ready"
        assert container_port(get["port"]) == CONTAINER["ports"][0]["containerPort"]


def dockerfile() -> str:
    return (ROOT / "web-service" / "Dockerfile").read_text()


def test_the_container_port_is_the_one_gunicorn_binds_in_the_image():
    environment = pod_environment()
    bind = Settings.from_environ({"BIND": environment["BIND"]} if "BIND" in environment else {}).bind
    assert "BIND" not in dockerfile(), "the image binds gunicorn's default"
    [exposed] = re.findall(r"^EXPOSE (\d+)$", dockerfile(), re.M)
    [port] = CONTAINER["ports"]
    assert port["containerPort"] == int(bind.rsplit(":", 1)[1]) == int(exposed)
    assert bind.startswith("0.0.0.0:"), "a pod is reached on its own address, not loopback"


def test_the_service_sends_to_the_container_port_of_the_deployment_pods():
    service = resources()["Service"]
    [port] = service["spec"]["ports"]
    assert container_port(port["targetPort"]) == CONTAINER["ports"][0]["containerPort"]
    assert service["spec"]["selector"].items() <= POD["metadata"]["labels"].items()


def test_the_environment_names_real_settings_and_the_secret_the_readme_creates():
    environment = pod_environment()
    assert set(environment) <= set(environment_names())
    Settings.from_environ({name: value for name, value in environment.items() if value is not None})
    [secret] = [variable["valueFrom"]["secretKeyRef"] for variable in CONTAINER["env"] if "valueFrom" in variable]
    readme = (ROOT / "web-service" / "README.md").read_text()
    assert f"kubectl create secret generic {secret['name']} --from-literal={secret['key']}=" in readme


def test_the_workers_fit_the_cpu_limit():
    workers = Settings.from_environ({"WEB_CONCURRENCY": pod_environment().get("WEB_CONCURRENCY", "")}).web_concurrency
    assert str(workers) == CONTAINER["resources"]["limits"]["cpu"]
    assert {"cpu", "memory"} <= CONTAINER["resources"]["requests"].keys()


def test_selectors_match_the_pods_and_the_autoscaler_and_budget_target_them():
    labels = POD["metadata"]["labels"].items()
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels
    budget, autoscaler = resources()["PodDisruptionBudget"], resources()["HorizontalPodAutoscaler"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": DEPLOYMENT["apiVersion"],
        "kind": "Deployment",
        "name": DEPLOYMENT["metadata"]["name"],
    }
    assert autoscaler["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in DEPLOYMENT["spec"], "the autoscaler owns the count; re-applying must not reset it"
    assert autoscaler["spec"]["minReplicas"] > budget["spec"]["maxUnavailable"], "a drain leaves a pod serving"


def gunicorn_graceful_timeout() -> int:
    """graceful_timeout as web-service/gunicorn.conf.py sets it, else gunicorn's default (read without running
    the file, which makes a metrics folder and exports its path)."""
    tree = ast.parse((ROOT / "web-service" / "gunicorn.conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "graceful_timeout" for t in node.targets):
            return ast.literal_eval(node.value)
    return GracefulTimeout.default


def test_a_rolling_update_keeps_every_pod_and_drains_before_gunicorn_stops():
    assert DEPLOYMENT["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = int(command[1])
    assert pause > 0
    assert POD["spec"]["terminationGracePeriodSeconds"] > pause + gunicorn_graceful_timeout()
    assert re.search(r'^CMD \["gunicorn"', dockerfile(), re.M), "gunicorn is PID 1 and gets the SIGTERM"
