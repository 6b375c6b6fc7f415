"""deploy/: Kubernetes manifests validated against the Kubernetes 1.34 schemas (strict: unknown
fields are errors), the overlay applied the way kustomize merges it, and the Collector config's
pipelines checked for undefined components."""

import copy
import pathlib

import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.34.0"


def load_all(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def validate(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def kustomization(dir_):
    return yaml.safe_load((dir_ / "kustomization.yaml").read_text())


def base_resources():
    base = DEPLOY / "kubernetes" / "base"
    docs = []
    for name in kustomization(base)["resources"]:
        docs += load_all(base / name)
    return docs


def test_base_manifests_validate_strictly():
    docs = base_resources()
    assert {d["kind"] for d in docs} == {"Deployment", "ConfigMap", "Service"}
    for doc in docs:
        validate(doc)


def test_a_broken_manifest_is_caught():
    doc = copy.deepcopy(next(d for d in base_resources() if d["kind"] == "Deployment"))
    doc["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(doc)


def sidecar(deployment):
    return next(c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "threadwarden")


def test_the_sidecar_is_native_hardened_and_probed_on_grpc_health():
    dep = next(d for d in base_resources() if d["kind"] == "Deployment")
    tw = sidecar(dep)
    assert tw["restartPolicy"] == "Always", "a native sidecar"
    assert "--listen=127.0.0.1:50051" in tw["args"], "the API stays on loopback inside the pod"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert tw[probe]["grpc"]["port"] == 50052, probe
    sc = tw["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert "limits" in tw["resources"] and "requests" in tw["resources"]
    grace = next(a for a in tw["args"] if a.startswith("--grace="))
    drain = int(grace.split("=")[1].rstrip("s"))
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def merge_named(base, patch):
    """kustomize's strategic merge for lists of objects keyed by `name`."""
    out = {item["name"]: item for item in base}
    for item in patch:
        out[item["name"]] = strategic(out.get(item["name"], {}), item)
    return list(out.values())


def strategic(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if k in out and isinstance(v, list) and v and isinstance(v[0], dict) and "name" in v[0] \
                    and k not in ("args",):
                out[k] = merge_named(out[k], v)
            else:
                out[k] = strategic(out.get(k), v) if isinstance(v, dict) else v
        return out
    return patch


def build_overlay(name):
    """The overlay's resources, patched and validated; returns them by (kind, name)."""
    overlay = DEPLOY / "kubernetes" / "overlays" / name
    k = kustomization(overlay)
    docs = {(d["kind"], d["metadata"]["name"]): d for d in base_resources()}
    for res in k["resources"]:
        path = overlay / res
        if path.is_file():
            for d in load_all(path):
                docs[(d["kind"], d["metadata"]["name"])] = d
    for p in k["patches"]:
        for patch in load_all(overlay / p["path"]):
            key = (patch["kind"], patch["metadata"]["name"])
            assert key in docs, f"patch {p['path']} targets a resource that does not exist: {key}"
            docs[key] = strategic(docs[key], patch)
    for doc in docs.values():
        doc.setdefault("metadata", {})["namespace"] = k["namespace"]
        validate(doc)
    return docs


def test_example_overlay_builds_into_valid_manifests():
    docs = build_overlay("example")
    dep = docs[("Deployment", "chat-server")]
    tw = sidecar(dep)
    assert any(a.startswith("--state-file=/var/lib/threadwarden/") for a in tw["args"])
    assert {m["name"] for m in tw["volumeMounts"]} == {"policy", "state"}
    policy = yaml.safe_load(docs[("ConfigMap", "threadwarden-policy")]["data"]["policy.yaml"])
    assert policy["mode"] == "shadow"


def test_redis_overlay_points_every_replica_at_one_redis_without_a_password_in_the_spec():
    docs = build_overlay("redis")
    dep = docs[("Deployment", "chat-server")]
    assert dep["spec"]["replicas"] > 1
    env = {e["name"]: e for e in sidecar(dep)["env"]}
    assert env["THREADWARDEN_STATE_BACKEND"]["value"].startswith("redis://")
    assert "@" not in env["THREADWARDEN_STATE_BACKEND"]["value"], "no credentials in the URL"
    assert env["THREADWARDEN_STATE_FAIL"]["value"] in ("open", "closed")
    assert "secretKeyRef" in env["THREADWARDEN_STATE_PASSWORD"]["valueFrom"]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env, "the base's env is kept"


def test_collector_config_pipelines_only_use_defined_components():
    cfg = yaml.safe_load((DEPLOY / "otel" / "collector.yaml").read_text())
    assert "otlp" in cfg["receivers"] and "grpc" in cfg["receivers"]["otlp"]["protocols"]
    assert "prometheus" in cfg["exporters"]
    pipelines = cfg["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for name, p in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in p.get(kind, []):
                assert component in cfg[kind], f"{name}: {kind} {component} is not defined"
    for ext in cfg["service"].get("extensions", []):
        assert ext in cfg["extensions"]


def test_the_policy_in_the_configmaps_is_a_valid_threadwarden_policy(tmp_path):
    import subprocess
    from conftest import BINARY
    docs = [d for d in base_resources() if d["kind"] == "ConfigMap"]
    docs += load_all(DEPLOY / "kubernetes" / "overlays" / "example" / "policy-shadow.yaml")
    for doc in docs:
        path = tmp_path / f"{doc['metadata']['name']}.yaml"
        path.write_text(doc["data"]["policy.yaml"])
        out = subprocess.run([str(BINARY), "policy", "validate", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
