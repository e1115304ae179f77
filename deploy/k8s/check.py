"""Validates the Kubernetes manifests of deploy/k8s (run by check.sh, in the venv).

- Every resource of a built-in kind is validated strictly (unknown fields refused) against
  the Kubernetes OpenAPI schema, with kubernetes-validate's `validate(..., strict=True)`,
  the check `kubernetes-validate --strict` runs. Unlike that command, a built-in kind
  without a schema (a mistyped apiVersion or kind) is an error here, not a warning.
- Custom resources are validated against the schemas in schemas/ (one per kind, named
  <kind>-<group>-<version>.json); a custom resource without one is an error.
- kustomization.yaml must list exactly the manifests of this directory, and every
  resource must be in its namespace.
- The references between the manifests must hold: selectors match labels, named ports
  exist, the service account, ConfigMap and Secret mounts fit the controller's
  configuration (whose TOML must parse) and its probes.
- Two replicas with leader election: RollingUpdate, each pod's name as its election
  identity, a PodDisruptionBudget that keeps one pod, and irsa-trust.json (the IAM role's
  trust policy) naming the manifests' namespace and service account.

Usage: python check.py [DIR] [--version 1.37.0] [--rendered FILE]
"""

import argparse
import json
import pathlib
import re
import sys
import tomllib

import jsonschema
import referencing
import yaml
from kubernetes_validate import utils as kv

# Custom resource groups: validated with our own schemas, never with kubernetes-validate.
CRD_GROUPS = {"monitoring.coreos.com"}
NOT_MANIFESTS = {"kustomization.yaml"}
# A Kubernetes resource quantity (the schemas only say "string").
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")


class Checker:
    def __init__(self, version):
        self.version = version
        self.errors = 0
        self.passed = 0

    def ok(self, what):
        self.passed += 1
        print(f"ok    {what}")

    def fail(self, what):
        self.errors += 1
        print(f"ERROR {what}")

    def check(self, cond, what):
        (self.ok if cond else self.fail)(what)
        return cond


def group_of(api_version):
    return api_version.split("/")[0] if "/" in api_version else ""


def name_of(res):
    return f'{res.get("kind")}/{res.get("metadata", {}).get("name")}'


def load(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d]
    except yaml.YAMLError as e:
        raise SystemExit(f"ERROR {path}: not YAML: {e}") from None


def definitions_registry(version):
    """Kubernetes' shared definitions (ObjectMeta, LabelSelector, ...) for $ref."""
    version = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)][-1]
    defs = kv.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    return referencing.Resource.from_contents(defs) @ referencing.Registry()


def validate_schema(c, source, res, schemas_dir, registry):
    api_version, kind = res.get("apiVersion", ""), res.get("kind", "")
    what = f"{source}: {name_of(res)} ({api_version})"
    if group_of(api_version) in CRD_GROUPS:
        group, _, version = api_version.partition("/")
        schema_file = schemas_dir / f"{kind.lower()}-{group.split('.')[0]}-{version}.json"
        if not schema_file.exists():
            return c.fail(f"{what}: custom resource without a schema ({schema_file.name})")
        schema = json.loads(schema_file.read_text())
        errors = sorted(
            jsonschema.Draft202012Validator(schema, registry=registry).iter_errors(res),
            key=lambda e: list(e.path),
        )
        for e in errors:
            c.fail(f"{what}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
        if not errors:
            c.ok(f"{what}: valid against schemas/{schema_file.name}")
        return
    try:
        v = kv.validate(res, c.version, strict=True)
        c.ok(f"{what}: valid (strict) against Kubernetes {v}")
    except kv.ValidationError as e:
        c.fail(f"{what}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
    except kv.SchemaNotFoundError as e:
        c.fail(f"{what}: {e.message} (a built-in kind must have one: mistyped apiVersion or kind?)")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cross_check(c, by_kind, namespace):
    one = {}
    for kind in ("Deployment", "Service", "ServiceAccount", "ConfigMap"):
        items = by_kind.get(kind, [])
        if c.check(len(items) == 1, f"exactly one {kind} (found {len(items)})"):
            one[kind] = items[0]
    if len(one) < 4:
        return
    dep, svc, sa, cm = one["Deployment"], one["Service"], one["ServiceAccount"], one["ConfigMap"]

    for res in [r for items in by_kind.values() for r in items]:
        ns = res["metadata"].get("namespace")
        if res["kind"] == "Namespace":
            c.check(res["metadata"]["name"] == namespace, f"Namespace is {namespace!r}")
        else:
            c.check(ns == namespace, f"{name_of(res)} is in namespace {namespace!r} (has {ns!r})")

    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    c.check(matches(spec["selector"].get("matchLabels"), pod_labels),
            "Deployment selector matches its pod labels")
    c.check(spec.get("replicas") == 2 and spec.get("strategy", {}).get("type") == "RollingUpdate",
            "Deployment: 2 replicas (leader and standby), strategy RollingUpdate")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        c.check(pdb["spec"].get("minAvailable") == 1
                and matches(pdb["spec"].get("selector", {}).get("matchLabels"), pod_labels),
                f"{name_of(pdb)}: minAvailable 1 of the controller's pods")
    c.check(matches(svc["spec"].get("selector"), pod_labels), "Service selector matches the pod labels")
    c.check(pod.get("serviceAccountName") == sa["metadata"]["name"],
            f"Deployment uses ServiceAccount {sa['metadata']['name']}")
    c.check("eks.amazonaws.com/role-arn" in sa["metadata"].get("annotations", {}),
            "ServiceAccount has the IRSA role annotation")

    containers = pod["containers"]
    c.check(len(containers) == 1, "one container")
    ctr = containers[0]
    ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
    psc, csc = pod.get("securityContext", {}), ctr.get("securityContext", {})
    c.check(psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot") is True,
            "runAsNonRoot (pod and container)")
    c.check(psc.get("runAsUser", 0) != 0, "pod runs as a non-zero uid")
    c.check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    c.check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    c.check(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    c.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
    res = ctr.get("resources", {})
    c.check(all(k in res.get(x, {}) for x in ("requests", "limits") for k in ("cpu", "memory")),
            "resource requests and limits for cpu and memory")
    for x in ("requests", "limits"):
        for k, v in res.get(x, {}).items():
            c.check(QUANTITY.match(str(v)) is not None, f"resources.{x}.{k} {v!r} is a quantity")
    env = {e.get("name"): e for e in ctr.get("env", [])}
    c.check("AWS_REGION" in env, "env AWS_REGION")
    identity = env.get("FLIGHTDECK_ELECTION_IDENTITY", {}).get("valueFrom", {}).get("fieldRef", {})
    c.check(identity.get("fieldPath") == "metadata.name",
            "env FLIGHTDECK_ELECTION_IDENTITY is the pod's name (downward API)")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = ctr.get(probe, {}).get("httpGet", {})
        c.check(get.get("path") == path and get.get("port") in ports,
                f"{probe} GET {path} on a declared port")
    for sp in svc["spec"]["ports"]:
        c.check(sp.get("targetPort") in ports or sp.get("targetPort") in ports.values(),
                f"Service port {sp.get('name')} targets a container port")

    # The configuration: the ConfigMap mounted where the controller reads it.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["name"]: m for m in ctr.get("volumeMounts", [])}
    args = ctr.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    config_vol = next((n for n, v in volumes.items()
                       if v.get("configMap", {}).get("name") == cm["metadata"]["name"]), None)
    if not c.check(config_vol in mounts and config_path,
                   f"ConfigMap {cm['metadata']['name']} mounted, and --config given"):
        return
    key = pathlib.PurePosixPath(config_path).relative_to(mounts[config_vol]["mountPath"]).as_posix()
    if not c.check(key in cm.get("data", {}), f"--config {config_path} is key {key!r} of the ConfigMap"):
        return
    try:
        conf = tomllib.loads(cm["data"][key])
        c.ok(f"ConfigMap {key} parses as TOML")
    except tomllib.TOMLDecodeError as e:
        return c.fail(f"ConfigMap {key}: not TOML: {e}")
    c.check("endpoint_url" not in conf, "no endpoint_url in the production configuration")
    c.check(conf.get("election", {}).get("enabled", True) is True, "election.enabled (two replicas need it)")
    http = conf.get("http", {})
    listen_port = int(str(http.get("listen", ":")).rpartition(":")[2] or 0)
    c.check(listen_port in ports.values(), f"http.listen port {listen_port} is a container port")
    # With http.metrics_listen, /metrics is served there only, and the probes belong there
    # too: hint traffic cannot use up that port's connections.
    metrics_port = listen_port
    if http.get("metrics_listen"):
        metrics_port = int(str(http["metrics_listen"]).rpartition(":")[2] or 0)
        c.check(metrics_port in ports.values(),
                f"http.metrics_listen port {metrics_port} is a container port")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = ctr.get(probe, {}).get("httpGet", {}).get("port")
            c.check(ports.get(port, port) == metrics_port,
                    f"{probe} on the http.metrics_listen port {metrics_port}")

    token_file = http.get("hint_token_file", "")
    secret_vol = next((n for n, v in volumes.items() if "secret" in v), None)
    if c.check(secret_vol in mounts, "a Secret volume is mounted (the hint token)"):
        mount = mounts[secret_vol]["mountPath"]
        items = volumes[secret_vol]["secret"].get("items", [])
        files = {f"{mount}/{i['path']}" for i in items}
        c.check(token_file in files, f"http.hint_token_file {token_file} is a file of the Secret mount")

    for sm in by_kind.get("ServiceMonitor", []):
        c.check(matches(sm["spec"]["selector"].get("matchLabels"), svc["metadata"].get("labels", {})),
                f"{name_of(sm)} selects the Service")
        svc_ports = {p.get("name"): p.get("targetPort") for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            c.check(ep.get("port") in svc_ports and ep.get("path") == "/metrics",
                    f"{name_of(sm)} scrapes /metrics on Service port {ep.get('port')}")
            target = svc_ports.get(ep.get("port"))
            c.check(ports.get(target, target) == metrics_port,
                    f"{name_of(sm)} scrapes the port /metrics is served on ({metrics_port})")


def check_trust(c, path, namespace, sa):
    """irsa-trust.json: web identity from one OIDC provider, for this service account only."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return c.fail(f"{path.name}: {e}")
    statements = doc.get("Statement", [])
    if not c.check(len(statements) == 1, f"{path.name}: one statement"):
        return
    st = statements[0]
    provider = st.get("Principal", {}).get("Federated", "")
    c.check(st.get("Effect") == "Allow" and st.get("Action") == "sts:AssumeRoleWithWebIdentity"
            and ":oidc-provider/" in provider,
            f"{path.name}: AssumeRoleWithWebIdentity for an OIDC provider")
    issuer = provider.partition(":oidc-provider/")[2]
    equals = st.get("Condition", {}).get("StringEquals", {})
    subject = f"system:serviceaccount:{namespace}:{sa['metadata']['name']}"
    c.check(equals.get(f"{issuer}:sub") == subject,
            f"{path.name}: only {subject} (the manifests' namespace and service account)")
    c.check(equals.get(f"{issuer}:aud") == "sts.amazonaws.com", f"{path.name}: audience sts.amazonaws.com")
    role = sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
    c.check(role.split(":")[4:5] == provider.split(":")[4:5],
            f"{path.name}: the provider is in the account of the ServiceAccount's role")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default=str(pathlib.Path(__file__).parent))
    ap.add_argument("--version", default=kv.latest_version())
    ap.add_argument("--rendered", help="also validate this file (e.g. kubectl kustomize output)")
    args = ap.parse_args()
    root = pathlib.Path(args.dir)
    c = Checker(args.version)
    registry = definitions_registry(args.version)

    manifests = sorted(p for p in root.glob("*.yaml") if p.name not in NOT_MANIFESTS)
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    listed = [r.split("#")[0].strip() for r in kustomization.get("resources", [])]
    c.check(sorted(listed) == sorted(p.name for p in manifests),
            f"kustomization.yaml lists exactly the manifests ({', '.join(sorted(listed))})")
    namespace = kustomization.get("namespace")

    by_kind = {}
    for path in manifests:
        for res in load(path):
            validate_schema(c, path.name, res, root / "schemas", registry)
            by_kind.setdefault(res.get("kind"), []).append(res)
    cross_check(c, by_kind, namespace)
    accounts = by_kind.get("ServiceAccount", [])
    if len(accounts) == 1:
        check_trust(c, root / "irsa-trust.json", namespace, accounts[0])

    if args.rendered:
        rendered = load(pathlib.Path(args.rendered))
        c.check(len(rendered) == sum(len(v) for v in by_kind.values()),
                f"kustomize renders {len(rendered)} resources")
        for res in rendered:
            validate_schema(c, "kustomize output", res, root / "schemas", registry)

    print(f"{c.passed} passed, {c.errors} failed")
    return 1 if c.errors else 0


if __name__ == "__main__":
    sys.exit(main())
