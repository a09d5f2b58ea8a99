"""Check the Helm chart the way CI does: ``make helm-check`` runs this in ``.venv-helm``.

For the chart's defaults and every ``helm/tokenwire/ci/*-values.yaml``:

1. ``helm lint --strict`` (helm-python-sdk: the Helm v4 SDK, no helm binary);
2. render, and validate every manifest against the Kubernetes 1.30 schemas in
   strict mode (kubernetes-validate: unknown fields fail);
3. assert what the chart promises: gRPC probes on grpc.health.v1 (on the
   plaintext health port when TLS or API keys are on), a termination grace
   above the server's drain, TLS and key files mounted read-only with the
   TOKENWIRE_* variable pointing at them, GPU limits, only documented settings,
   the HTTP front door's port on the container, the Services and the
   NetworkPolicy exactly when ``http.enabled`` (and ``TOKENWIRE_HTTP=false``
   when not), install notes that stream from each door, the pod label llm-d's
   router reads, and an InferencePool (a custom resource: its shape is checked
   here) that selects the server pods on the door it names, matching the router
   values of helm/tokenwire/examples/llmd-router-values.yaml.

Then one checkov scan over all the renders (skips justified in
``helm/.checkov.yaml``), and values the chart must refuse are refused.
Rendered manifests are left in ``build/helm-check/`` for reading.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import helm_python as helm
import kubernetes_validate.utils as kv  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "tokenwire"
OUT = ROOT / "build" / "helm-check"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "tw", "inference"
# Custom resources the Kubernetes schemas do not know, and their required shape
# (the InferencePool's in full in check_inference_pool).
CRD_FIELDS = {
    "ServiceMonitor": ("spec.selector", "spec.endpoints"),
    "InferencePool": ("spec.selector.matchLabels", "spec.targetPorts", "spec.endpointPickerRef"),
}
GRPC_SERVICE = "tokenwire.v1.GenerationService"
# llm-d's router finds a pod's engineConfigs entry by this label.
ENGINE_LABEL = "llm-d.ai/engine-type"
ROUTER_VALUES = CHART / "examples" / "llmd-router-values.yaml"

Manifest = dict[str, Any]


def fail(message: str) -> NoReturn:
    raise SystemExit(f"helm-check: {message}")


def check(condition: object, message: str) -> None:
    if not condition:
        fail(message)


def value_sets() -> dict[str, dict[str, Any]]:
    sets: dict[str, dict[str, Any]] = {"default": {}}
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        sets[path.name.removesuffix("-values.yaml")] = helm.values_from_yaml(path.read_text())
    return sets


def lint(name: str, values: dict[str, Any]) -> None:
    report = helm.lint(
        CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    # Severity 1 is informational ("icon is recommended"); 2 warning, 3 error.
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    check(not problems, f"{name}: helm lint --strict: {problems}")


def render(chart: helm.Chart, name: str, values: dict[str, Any]) -> tuple[list[Manifest], str]:
    """Render, write each template to build/helm-check/<set>/; the manifests and the notes."""
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    folder = OUT / name
    folder.mkdir(parents=True)
    manifests: list[Manifest] = []
    notes = ""
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        if not text.strip():
            continue
        (folder / template.replace("/", "_")).write_text(text)
        for document in re.split(r"^---\s*$", text, flags=re.MULTILINE):
            if document.strip():
                manifests.append(helm.values_from_yaml(document))
    return manifests, notes


def check_notes(name: str, v: dict[str, Any], notes: str) -> None:
    """The install notes walk through each open door with the flags the values need."""
    walkthrough = ("port-forward", "Health/Check", "GenerationService/Generate")
    check(all(w in notes for w in walkthrough), f"{name}: NOTES.txt lacks the grpcurl steps")
    check(
        ("InferencePool" in notes) == v["inferencePool"]["enabled"],
        f"{name}: NOTES.txt speaks of the InferencePool exactly when there is one",
    )
    chat = "/v1/chat/completions"
    if not v["http"]["enabled"]:
        check(chat not in notes, f"{name}: NOTES.txt shows an HTTP door that is off")
        return
    curl = notes[notes.index("curl -N ") :].split("\n\n")[0] if "curl -N " in notes else ""
    forward = f"port-forward service/{RELEASE}-tokenwire 8000:{v['service']['httpPort']}"
    check(forward in notes, f"{name}: NOTES.txt does not forward the HTTP port")
    check(chat in curl and '"stream": true' in curl, f"{name}: NOTES.txt lacks the curl stream")
    check(
        ("Authorization: Bearer" in curl) == v["auth"]["enabled"],
        f"{name}: the curl example sends an API key exactly when keys are on",
    )
    check(
        ("https://" in curl and "--cacert" in curl) == v["tls"]["enabled"],
        f"{name}: the curl example speaks HTTPS exactly when TLS is on",
    )


def validate(name: str, manifest: Manifest) -> None:
    kind, title = manifest.get("kind", "?"), f"{name}: {manifest.get('kind')}"
    try:
        kv.validate(manifest, KUBE_VERSION, strict=True)
    except kv.SchemaNotFoundError:
        check(kind in CRD_FIELDS, f"{title}: no schema for this kind")
        for path in CRD_FIELDS[kind]:
            check(dig(manifest, path) is not None, f"{title}: {path} missing")
    except kv.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        fail(f"{title}/{manifest['metadata']['name']}: {path}: {error.message}")


def dig(data: Any, path: str) -> Any:
    for key in path.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def one(manifests: list[Manifest], kind: str, component: str = "server") -> Manifest:
    found = [
        m
        for m in manifests
        if m["kind"] == kind
        and m["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    check(len(found) == 1, f"expected one {kind} ({component}), found {len(found)}")
    return found[0]


def documented_flags() -> set[str]:
    return set(re.findall(r"`--([a-z0-9-]+)`", (ROOT / "docs" / "operations.md").read_text()))


def documented_metrics() -> set[str]:
    """The names in the first column of docs/operations.md's metrics table."""
    text = (ROOT / "docs" / "operations.md").read_text()
    return set(re.findall(r"^\| `(tokenwire_[a-z_]+)` \|", text, re.MULTILINE))


def check_inference_pool(name: str, v: dict[str, Any], manifests: list[Manifest]) -> None:
    """The pool has the v1 API's shape, selects exactly the server pods, targets the
    container port of the door it names, and refers to the endpoint picker."""
    deployment = one(manifests, "Deployment")
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    engine = v["podLabels"].get(ENGINE_LABEL, "tokenwire")
    check(pod_labels.get(ENGINE_LABEL) == engine, f"{name}: pods lack {ENGINE_LABEL}: {engine}")
    pools = [m for m in manifests if m["kind"] == "InferencePool"]
    check(len(pools) == int(v["inferencePool"]["enabled"]), f"{name}: InferencePool")
    if not pools:
        return
    pool, spec, want = pools[0], pools[0]["spec"], v["inferencePool"]
    title = f"{name}: InferencePool"
    check(pool["apiVersion"] == "inference.networking.k8s.io/v1", f"{title}: apiVersion")
    check(set(spec) <= {"selector", "targetPorts", "appProtocol", "endpointPickerRef"}, title)
    selector = spec["selector"]
    check(set(selector) == {"matchLabels"}, f"{title}: the selector is matchLabels only")
    labels = selector["matchLabels"]
    check(
        labels == deployment["spec"]["selector"]["matchLabels"],
        f"{title}: selector {labels} is not the Deployment's",
    )
    check(labels.items() <= pod_labels.items(), f"{title}: selects no server pod")
    for other in (m for m in manifests if m["kind"] == "Pod"):
        selected = labels.items() <= other["metadata"]["labels"].items()
        check(not selected, f"{title}: selects pod {other['metadata']['name']}")
    server = next(c for c in template["spec"]["containers"] if c["name"] == "server")
    door = want["targetPort"]
    port = next((p["containerPort"] for p in server["ports"] if p["name"] == door), None)
    check(port is not None, f"{title}: the container has no {door} port")
    check(spec["targetPorts"] == [{"number": port}], f"{title}: targetPorts {spec['targetPorts']}")
    # The API's values: "http" (its default, left out) and "kubernetes.io/h2c".
    protocol = {"http": None, "grpc": "kubernetes.io/h2c"}[door]
    check(spec.get("appProtocol") == protocol, f"{title}: appProtocol for {door}")
    ref, asked = spec["endpointPickerRef"], want["endpointPickerRef"]
    check(ref["name"] == asked["name"], f"{title}: endpointPickerRef.name")
    expected: dict[str, Any] = {"name": asked["name"]}
    for key in ("kind", "group", "failureMode"):
        if asked[key]:
            expected[key] = asked[key]
    if asked.get("port") is not None:
        expected["port"] = {"number": asked["port"]}
    check(ref == expected, f"{title}: endpointPickerRef {ref}, expected {expected}")
    check(ref.get("failureMode", "FailClose") in {"FailOpen", "FailClose"}, f"{title}: failureMode")
    check(
        "port" in ref or ref.get("kind", "Service") != "Service",
        f"{title}: a Service endpoint picker needs a port",
    )


def check_llmd(name: str, manifests: list[Manifest]) -> None:
    """docs/deploy.md's llm-d setup: the router values fit this pool (llm-d's EPP finds
    the same pods on the same port, its engineConfigs entry is named by the pods'
    label), and the HPA scales on requests waiting."""
    hpa = next(m for m in manifests if m["kind"] == "HorizontalPodAutoscaler")
    metrics = [dig(m, "pods.metric.name") for m in hpa["spec"]["metrics"]]
    check(metrics == ["tokenwire_num_requests_waiting"], f"{name}: the HPA scales on {metrics}")
    pool = next(m for m in manifests if m["kind"] == "InferencePool")
    deployment = one(manifests, "Deployment")
    engine = deployment["spec"]["template"]["metadata"]["labels"][ENGINE_LABEL]
    router = helm.values_from_yaml(ROUTER_VALUES.read_text())["router"]
    title = f"{name}: {ROUTER_VALUES.relative_to(ROOT)}"
    check(router["inferencePool"]["create"] is False, f"{title}: the chart makes the pool")
    servers = router["modelServers"]
    selector = pool["spec"]["selector"]["matchLabels"]
    check(servers["matchLabels"] == selector, f"{title}: matchLabels are not the pool's")
    check(servers["targetPorts"] == pool["spec"]["targetPorts"], f"{title}: targetPorts")
    files = router["epp"]["pluginsCustomConfig"]
    config = helm.values_from_yaml(files[router["epp"]["pluginsConfigFile"]])
    extractor = next(p for p in config["plugins"] if p["type"] == "core-metrics-extractor")
    names = [e["name"] for e in extractor["parameters"]["engineConfigs"]]
    check(engine in names, f"{title}: no engineConfigs entry for engine type {engine}")


def check_properties(name: str, v: dict[str, Any], manifests: list[Manifest]) -> None:
    """What the chart promises, for the merged values ``v`` of one set."""
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    env = {e["name"]: e.get("value") for e in server["env"]}
    check(len(env) == len(server["env"]), f"{name}: an environment variable is set twice")
    mounts = {m["mountPath"]: m for m in server.get("volumeMounts", [])}
    volumes = {vol["name"]: vol for vol in pod["volumes"]}

    # Every TOKENWIRE_* variable is a documented server setting.
    flags = documented_flags()
    for var in (e for e in env if e.startswith("TOKENWIRE_")):
        flag = var.removeprefix("TOKENWIRE_").lower().replace("_", "-")
        check(flag in flags, f"{name}: {var} is not a setting in docs/operations.md")
    check(env["TOKENWIRE_ENGINE"] == v["engine"]["kind"], f"{name}: engine not mapped")
    check(env["TOKENWIRE_HOST"] == v["server"]["host"], f"{name}: host not mapped")

    # Probes: native gRPC on grpc.health.v1, on the plaintext port when guarded.
    guarded = v["tls"]["enabled"] or v["auth"]["enabled"]
    probe_port = v["server"]["healthPort"] if guarded else v["server"]["port"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = server[kind].get("grpc")
        check(grpc and grpc["port"] == probe_port, f"{name}: {kind} is not grpc on {probe_port}")
    for kind in ("startupProbe", "readinessProbe"):
        check(server[kind]["grpc"]["service"] == GRPC_SERVICE, f"{name}: {kind} service")
    startup = server["startupProbe"]
    check(
        startup["periodSeconds"] * startup["failureThreshold"] >= 600,
        f"{name}: the startup probe allows less than 10 minutes for a model load",
    )
    check(
        (env.get("TOKENWIRE_HEALTH_PORT") is not None) == bool(guarded),
        f"{name}: the health port is opened exactly when TLS or API keys are on",
    )

    # Shutdown: Kubernetes waits longer than the preStop sleep plus the drain.
    grace = float(env["TOKENWIRE_SHUTDOWN_GRACE_S"])
    check(grace == v["server"]["shutdownGraceS"], f"{name}: shutdown grace not mapped")
    sleep = dig(server, "lifecycle.preStop.sleep.seconds") or 0
    check(
        pod["terminationGracePeriodSeconds"] > grace + sleep,
        f"{name}: terminationGracePeriodSeconds must exceed the preStop sleep + drain",
    )

    # Locked down: non-root, read-only root with a writable /tmp, no capabilities.
    security = server["securityContext"]
    check(security["runAsNonRoot"] and security["readOnlyRootFilesystem"], f"{name}: root")
    check(security["capabilities"]["drop"] == ["ALL"], f"{name}: capabilities")
    check(not security["allowPrivilegeEscalation"], f"{name}: privilege escalation")
    check("emptyDir" in volumes[mounts["/tmp"]["name"]], f"{name}: /tmp is not an emptyDir")
    if v["sharedMemory"]["enabled"]:
        shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
        check(shm["medium"] == "Memory", f"{name}: /dev/shm is not memory-backed")

    # GPUs are limits of the resource the device plugin advertises.
    limits = server["resources"].get("limits", {})
    gpus = v["gpu"]["count"]
    check(limits.get(v["gpu"]["resourceName"], 0) == gpus, f"{name}: GPU limit")
    if gpus == 0:
        check(server["image"].endswith("-cpu"), f"{name}: CPU pods default to the -cpu image")

    # Secrets are read-only directory mounts, and the variable names the file in it.
    def mounted_file(var: str, secret: str) -> None:
        path = env.get(var)
        check(path is not None, f"{name}: {var} is not set")
        mount = mounts.get(str(Path(str(path)).parent), {})
        check(mount.get("readOnly"), f"{name}: {path} is not on a read-only mount")
        check("subPath" not in mount, f"{name}: subPath mounts never see a rotated secret")
        source = volumes[mount["name"]]["secret"]
        check(source["secretName"] == secret, f"{name}: {var} reads the wrong secret")
        check(
            Path(str(path)).name in {i["path"] for i in source["items"]},
            f"{name}: {var} names a file the secret volume does not hold",
        )

    if v["tls"]["enabled"]:
        mounted_file("TOKENWIRE_TLS_CERT", v["tls"]["secretName"])
        mounted_file("TOKENWIRE_TLS_KEY", v["tls"]["secretName"])
        if v["tls"]["clientCASecretName"]:
            mounted_file("TOKENWIRE_TLS_CLIENT_CA", v["tls"]["clientCASecretName"])
    else:
        check("TOKENWIRE_TLS_CERT" not in env, f"{name}: TLS set without tls.enabled")
    if v["auth"]["enabled"]:
        mounted_file("TOKENWIRE_API_KEYS_FILE", v["auth"]["existingSecret"])

    # The Service speaks h2c (plaintext gRPC) or TLS, named for gateways.
    service = next(m for m in manifests if m["kind"] == "Service" and "clusterIP" not in m["spec"])
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    expected = "https" if v["tls"]["enabled"] else "kubernetes.io/h2c"
    check(grpc_port["appProtocol"] == expected, f"{name}: appProtocol {grpc_port}")
    headless = [m for m in manifests if m["kind"] == "Service" and "clusterIP" in m["spec"]]
    check(len(headless) == int(v["service"]["headless"]["enabled"]), f"{name}: headless")

    # The HTTP front door: a named port on the container and the Services, and
    # its variables, exactly when http.enabled; the server is told when it is off.
    container_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    check(
        len(set(container_ports.values())) == len(server["ports"]),
        f"{name}: two container ports share a number: {container_ports}",
    )
    policies = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    policy_ports = [
        [p["port"] for p in rule["ports"]] for pol in policies for rule in pol["spec"]["ingress"]
    ]
    if v["http"]["enabled"]:
        check(container_ports.get("http") == v["http"]["port"], f"{name}: no http containerPort")
        check(env.get("TOKENWIRE_HTTP") == "true", f"{name}: TOKENWIRE_HTTP is not true")
        check(
            env.get("TOKENWIRE_HTTP_PORT") == str(v["http"]["port"]),
            f"{name}: TOKENWIRE_HTTP_PORT is not http.port",
        )
        scheme = "https" if v["tls"]["enabled"] else "http"
        for svc in [service, *headless]:
            http = next((p for p in svc["spec"]["ports"] if p["name"] == "http"), None)
            title = f"{name}: Service {svc['metadata']['name']}"
            if http is None:
                fail(f"{title} has no http port")
            check(http["port"] == v["service"]["httpPort"], f"{title}: http port number")
            check(http["targetPort"] == "http", f"{title}: http targets {http['targetPort']}")
            protocol = v["service"]["httpAppProtocol"] or scheme
            check(http["appProtocol"] == protocol, f"{title}: http appProtocol {http}")
        check(not policies or ["http"] in policy_ports, f"{name}: NetworkPolicy shuts http")
    else:
        check("http" not in container_ports, f"{name}: http containerPort with http off")
        check(env.get("TOKENWIRE_HTTP") == "false", f"{name}: http off needs TOKENWIRE_HTTP=false")
        check("TOKENWIRE_HTTP_PORT" not in env, f"{name}: TOKENWIRE_HTTP_PORT with http off")
        for svc in [service, *headless]:
            names = [p["name"] for p in svc["spec"]["ports"]]
            check("http" not in names, f"{name}: {svc['metadata']['name']} has http, http off")
        check(all("http" not in ps for ps in policy_ports), f"{name}: NetworkPolicy http port")

    # Autoscaling replaces the replica count; the queue metric is one tokenwire exports.
    hpas = [m for m in manifests if m["kind"] == "HorizontalPodAutoscaler"]
    check(len(hpas) == int(v["autoscaling"]["enabled"]), f"{name}: HPA")
    if hpas:
        check("replicas" not in deployment["spec"], f"{name}: replicas fight the HPA")
        metrics = [dig(m, "pods.metric.name") for m in hpas[0]["spec"]["metrics"]]
        queue = v["autoscaling"]["queueDepth"]
        check((queue["metricName"] in metrics) == queue["enabled"], f"{name}: queue metric")
        check(
            not queue["enabled"] or queue["metricName"] in documented_metrics(),
            f"{name}: the HPA scales on {queue['metricName']}, not a metric in docs/operations.md",
        )

    check_inference_pool(name, v, manifests)

    # helm test: a hook pod with pinned images, never selected as a server.
    if v["tests"]["enabled"]:
        test = one(manifests, "Pod", component="test")
        check(test["metadata"]["annotations"]["helm.sh/hook"] == "test", f"{name}: test hook")
        for c in test["spec"]["initContainers"] + test["spec"]["containers"]:
            check(not c["image"].endswith(":latest"), f"{name}: unpinned test image")


# Values the chart must refuse: (why, values, words of the error).
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("unknown engine", {"engine": {"kind": "vllm"}}, "/engine/kind"),
    ("port out of range", {"server": {"port": 70000}}, "/server/port"),
    ("negative replicas", {"replicaCount": -1}, "/replicaCount"),
    ("unknown top-level key", {"replicas": 2}, "'replicas' not allowed"),
    ("GPU count as text", {"gpu": {"count": "two"}}, "/gpu/count"),
    ("bad storage type", {"modelStorage": {"type": "s3"}}, "/modelStorage/type"),
    ("tensorrt-llm without GPUs", {"engine": {"kind": "tensorrt-llm"}}, "gpu.count"),
    ("TLS without a secret", {"tls": {"enabled": True}}, "tls.secretName"),
    ("keys without a secret", {"auth": {"enabled": True}}, "auth.existingSecret"),
    ("HTTP on the gRPC port", {"http": {"port": 50051}}, "http.port must differ"),
    ("HTTP on the metrics port", {"http": {"port": 9464}}, "http.port must differ"),
    ("HTTP port out of range", {"http": {"port": 0}}, "/http/port"),
    (
        "an InferencePool without an endpoint picker",
        {"inferencePool": {"enabled": True}},
        "inferencePool.endpointPickerRef.name",
    ),
    (
        "an InferencePool on the HTTP door with the door off",
        {
            "inferencePool": {"enabled": True, "endpointPickerRef": {"name": "epp"}},
            "http": {"enabled": False},
        },
        "inferencePool.targetPort http needs http.enabled",
    ),
    (
        "an endpoint picker Service without a port",
        {"inferencePool": {"enabled": True, "endpointPickerRef": {"name": "epp", "port": None}}},
        "inferencePool.endpointPickerRef.port",
    ),
    (
        "an InferencePool on the metrics port",
        {"inferencePool": {"targetPort": "metrics"}},
        "/inferencePool/targetPort",
    ),
    (
        "a failure mode the API does not have",
        {"inferencePool": {"endpointPickerRef": {"failureMode": "FailClosed"}}},
        "/inferencePool/endpointPickerRef/failureMode",
    ),
    ("an unknown InferencePool key", {"inferencePool": {"port": 8000}}, "'port' not allowed"),
    (
        "mutual TLS test without a client certificate",
        {"tls": {"enabled": True, "secretName": "s", "clientCASecretName": "ca"}},
        "tests.clientCertSecretName",
    ),
]


def check_refusals(chart: helm.Chart) -> None:
    for why, values, words in REFUSED:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
        except helm.HelmError as error:
            check(words in str(error), f"refused {why}, but the error does not say so: {error}")
        else:
            fail(f"the chart accepted values it must refuse: {why}")


def check_documented_values() -> None:
    """helm-docs style: every leaf of values.yaml, or an ancestor, has a `# --` comment."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    covered: int | None = None  # indent of a documented key whose value is a block
    for number, line in enumerate(lines):
        match = re.match(r"^( *)[A-Za-z][\w.-]*:(.*)$", line)
        if not match:
            continue
        indent, inline = len(match.group(1)), match.group(2).strip()
        if covered is not None and indent > covered:
            continue
        covered = None
        above = number - 1
        while above >= 0 and lines[above].lstrip().startswith("#"):
            above -= 1
        comments = lines[above + 1 : number]
        if any(c.startswith(" " * indent + "# -- ") for c in comments):
            covered = None if inline else indent
        else:
            check(not inline, f"values.yaml line {number + 1}: no `# --` comment")


def check_images(defaults: dict[str, Any]) -> None:
    """The images (hadolint lints them) run as the chart's uid, expose its ports."""
    uid = defaults["securityContext"]["runAsUser"]
    ports = {defaults["server"][key] for key in ("port", "metricsPort", "healthPort")}
    ports.add(defaults["http"]["port"])
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = (ROOT / name).read_text()
        check(f"\nUSER {uid}:{uid}\n" in text, f"{name}: USER is not the chart's runAsUser {uid}")
        exposed = {int(p) for ps in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in ps.split()}
        check(ports <= exposed, f"{name}: EXPOSE {exposed} lacks the chart's ports {ports}")
        check("TOKENWIRE_HOST=0.0.0.0" in text, f"{name}: the server must listen beyond loopback")
        entrypoint = re.search(r'^ENTRYPOINT \[.*"tokenwire-server"\]$', text, re.M)
        check(entrypoint, f"{name}: ENTRYPOINT is not tokenwire-server")
    gpu, cpu = (ROOT / "Dockerfile").read_text(), (ROOT / "Dockerfile.cpu").read_text()
    base = re.search(r"^ARG TRTLLM_IMAGE=nvcr.io/nvidia/tensorrt-llm/release:(\S+)$", gpu, re.M)
    check(base and base.group(1) != "latest", "Dockerfile: pin a TensorRT-LLM release tag")
    check("[tensorrt-llm]" not in gpu, "Dockerfile: the base image brings tensorrt_llm")
    check("--index-url https://download.pytorch.org/whl/cpu" in cpu, "Dockerfile.cpu: CPU torch")


def checkov() -> None:
    binary = shutil.which("checkov", path=str(Path(sys.executable).parent))
    check(binary, "checkov is not installed in this environment")
    result = subprocess.run(
        [str(binary), "-d", str(OUT), "--framework", "kubernetes", "--skip-download",
         "--config-file", str(ROOT / "helm" / ".checkov.yaml"), "--compact", "--quiet"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    check(result.returncode == 0, f"checkov found problems:\n{result.stdout}{result.stderr}")


def main() -> None:
    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    sets = value_sets()
    with helm.Chart.load(CHART) as chart:
        for name, values in sets.items():
            lint(name, values)
            manifests, notes = render(chart, name, values)
            for manifest in manifests:
                validate(name, manifest)
            merged = chart.merge_values(values)
            check_properties(name, merged, manifests)
            check_notes(name, merged, notes)
            if name == "llmd":
                check_llmd(name, manifests)
            print(f"helm-check: {name}: lint, {len(manifests)} manifests valid, properties hold")
        check_refusals(chart)
        check_images(chart.values)
    check_documented_values()
    checkov()
    print(
        f"helm-check: {len(sets)} value sets, {len(REFUSED)} refusals and checkov passed"
        f" in {time.monotonic() - started:.0f}s"
    )


if __name__ == "__main__":
    main()
