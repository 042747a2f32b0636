"""deploy/ validated offline: the plain Kubernetes manifests against the Kubernetes API schemas
(kubernetes-validate, strict), the KubeRay RayService against a small JSON schema of the fields we use plus
its pod templates against the Kubernetes PodTemplateSpec schema and its serveConfigV2 against Ray Serve's
own config schema, and the container recipe and config against each other. No cluster is needed (none is
here); the RayService CRD itself is not in kubernetes-validate's schemas."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from resnest_serving.serving.config.loader import load_config
from resnest_serving.serving.doors.rest_door import HEALTH_PATHS
from support import installed_folders

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent
K8S_VERSION = "1.30.0"  # a version every supported cluster serves these APIs at (apps/v1, autoscaling/v2)


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def plain() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in documents(DEPLOY / "kubernetes" / "resnest.yaml")}


@pytest.fixture(scope="module")
def rayservice() -> dict:
    (doc,) = documents(DEPLOY / "kuberay" / "rayservice.yaml")
    return doc


@pytest.fixture(scope="module")
def container_config():
    """deploy/config.yml, the file the image copies to /app/config.yml."""
    return load_config(DEPLOY / "config.yml")


def test_plain_manifests_validate_strictly(plain):
    assert set(plain) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for doc in plain.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught(plain):
    """The validator really checks: a misspelt field and a wrong type are refused."""
    import copy

    bad = copy.deepcopy(plain["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(plain["Service"])
    bad["spec"]["ports"][0]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_plain_deployment_matches_the_server(plain, container_config):
    """Ports, probes and scrape annotations name what `resnest serve --config deploy/config.yml` serves."""
    deployment, service, hpa = plain["Deployment"], plain["Service"], plain["HorizontalPodAutoscaler"]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": container_config.rpc_port, "http": container_config.http_port}
    assert container["command"][-2:] == ["--config", "/app/config.yml"]
    for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready"),
                        ("startupProbe", "/health/live")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and HEALTH_PATHS[path] == path.rsplit("/", 1)[1] and get["port"] == "http"
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container_config.http_port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert template["spec"]["terminationGracePeriodSeconds"] > container_config.shutdown_grace_s
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert container["resources"]["requests"]["cpu"], "an HPA on CPU utilisation needs a CPU request"
    cpus = float(container["resources"]["requests"]["cpu"])
    assert container_config.op[0].local_service_conf.thread_num * container_config.op[0].concurrency <= cpus


# The RayService fields this project uses (KubeRay ray.io/v1); unknown keys are refused at the levels we
# write, so a misspelt field fails here instead of being dropped by the API server.
_POD_TEMPLATE = {"type": "object", "required": ["spec"]}
_GROUP = {"type": "object", "required": ["rayStartParams", "template"],
          "properties": {"rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
                         "template": _POD_TEMPLATE}}
RAYSERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                "serveConfigV2": {"type": "string"},
                "serveService": {"type": "object", "required": ["spec"]},
                "rayClusterConfig": {
                    "type": "object", "additionalProperties": False,
                    "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
                    "properties": {
                        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "headGroupSpec": {**_GROUP, "additionalProperties": False},
                        "workerGroupSpecs": {"type": "array", "minItems": 1, "items": {
                            **_GROUP, "additionalProperties": False,
                            "required": ["groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"],
                            "properties": {**_GROUP["properties"], "groupName": {"type": "string"},
                                           "replicas": {"type": "integer", "minimum": 0},
                                           "minReplicas": {"type": "integer", "minimum": 0},
                                           "maxReplicas": {"type": "integer", "minimum": 1}}}},
                    },
                },
            },
        },
    },
}
RAYSERVICE_SCHEMA["properties"]["spec"]["properties"]["rayClusterConfig"]["properties"]["headGroupSpec"]["properties"] = \
    _GROUP["properties"]


def test_rayservice_structure(rayservice):
    jsonschema.validate(rayservice, RAYSERVICE_SCHEMA)
    broken = {**rayservice, "spec": {**rayservice["spec"], "serveConfigv2": "typo"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAYSERVICE_SCHEMA)


def test_rayservice_pod_templates_and_service_validate(rayservice):
    """Each pod template is a Kubernetes PodTemplateSpec and serveService a Service (strict schemas)."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": group["template"]}, K8S_VERSION, strict=True)
    service = rayservice["spec"]["serveService"]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Service", **service}, K8S_VERSION, strict=True)
    # Ray's own version is the one the image installs.
    import ray

    assert cluster["rayVersion"] == ray.__version__


def test_serve_config_v2_is_a_valid_serve_config(rayservice, container_config):
    """serveConfigV2 parses with Ray Serve's own schema, names our gRPC servicer and the config's ports, and
    its application args build the application (app_builder with the image's config)."""
    from ray.serve.schema import ServeDeploySchema

    from resnest_serving.serving.ray.app import DEPLOYMENT_NAME, GRPC_SERVICER, app_builder

    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(serve_config)
    assert schema.http_options.port == container_config.http_port
    assert schema.grpc_options.port == container_config.rpc_port
    assert schema.grpc_options.grpc_servicer_functions == [GRPC_SERVICER]
    (app,) = schema.applications
    assert app.import_path == "resnest_serving.serving.ray.app:app_builder" and app.route_prefix == "/"
    args = dict(app.args)
    assert args["config"] == "/app/config.yml"
    built = app_builder({**args, "config": str(DEPLOY / "config.yml")})
    deployment = built._bound_deployment  # Ray has no public accessor for an Application's deployment
    assert deployment.name == DEPLOYMENT_NAME
    autoscaling = deployment._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (args["min_replicas"], args["max_replicas"])
    assert autoscaling.target_ongoing_requests == args["target_ongoing"]
    assert deployment.ray_actor_options["num_cpus"] == args["replica_cpus"]
    workers = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert all(float(g["rayStartParams"]["num-cpus"]) >= args["replica_cpus"] for g in workers), \
        "a worker pod must fit one replica"
    ports = {p["containerPort"] for g in workers for c in g["template"]["spec"]["containers"] for p in c["ports"]}
    assert {container_config.rpc_port, container_config.http_port} <= ports


def test_app_builder_rejects_bad_args():
    from resnest_serving.serving.ray.app import app_builder

    with pytest.raises(ValueError, match="need 'config'"):
        app_builder({})
    with pytest.raises(ValueError, match=r"unknown application args \['replicas'\]"):
        app_builder({"config": str(DEPLOY / "config.yml"), "replicas": 3})
    with pytest.raises(ValueError, match="--ray-max-replicas \\(1\\) must be >= --ray-min-replicas \\(2\\)"):
        app_builder({"config": str(DEPLOY / "config.yml"), "min_replicas": 2, "max_replicas": 1})


def test_dockerfile_copies_what_exists_and_serves_the_config():
    """The recipe's COPY sources exist, its CMD serves the copied config, and the export it runs names files
    that are in demo/ (docker build itself is not run: no Docker daemon here)."""
    text = (DEPLOY / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+(\S+)$", text, flags=re.M)
    assert copies
    for sources, _dest in copies:
        for source in sources.split():
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    assert ("deploy/config.yml", "/app/config.yml") in copies
    assert 'CMD ["resnest", "serve", "--config", "/app/config.yml"]' in text
    for name in re.findall(r"demo/[\w.-]*\w", text):
        assert (REPO / name).is_file(), name
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for sources, _dest in copies:
        for source in sources.split():
            assert f"!{source}" in ignore or f"!{source}/**" in ignore, f"{source} is excluded from the build context"
    copied = {source.rstrip("/") for sources, _dest in copies for source in sources.split()}
    missing = set(installed_folders()) - copied
    assert not missing, f"setup.py installs {sorted(missing)} but the image does not COPY them"
    extras = re.search(r"^RUN pip install '\.\[([\w,]+)\]'", text, flags=re.M)
    assert extras and {"server", "export", "ray"} <= set(extras[1].split(",")), \
        "the image serves (server), exports the demo model at build time (export) and runs Ray pods (ray)"
    container = load_config(DEPLOY / "config.yml")
    assert str(container.op[0].local_service_conf.model_config).startswith("/models/demo")
    assert container.host == "0.0.0.0"
