"""The Helm chart's tests: what `helm lint` and the Kubernetes schemas check, and what a real
API server (or hookbridge itself) would reject that they do not.

Run by scripts/chart-test, which provides HELM (the official binary) and HOOKBRIDGE_BIN, and
runs this with a Python that has kubernetes-validate and PyYAML.

Each `helm/hookbridge/ci/*-values.yaml` is rendered and checked; its header may list the
Secrets and ConfigMaps it expects to exist already (`# pre-existing: a, b`). Each
`ci/bad/*.yaml` must be refused, with the message its header names (`# expect: text`).

The Grafana dashboard and the PrometheusRule are checked here as text (JSON, panel ids, the
datasource variable, metric names, runbook links); tests/chart/check_queries.py runs their
queries against a real Prometheus.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "hookbridge"
HELM = os.environ["HELM"]
BIN = os.environ["HOOKBRIDGE_BIN"]
NAMESPACE = "hooks"
# The three newest minor versions kubernetes-validate carries schemas for.
KUBERNETES_VERSIONS = ["1.35", "1.36", "1.37"]

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
# A placeholder for secrets in check-config: a valid Standard Webhooks secret, so it also
# passes where one is required.
PLACEHOLDER_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

WORKLOADS = {"Deployment", "StatefulSet"}
# Files of `secretMounts` the config names: /etc/hookbridge-secrets/<name>/<file>.
SECRET_FILE = re.compile(r"/etc/hookbridge-secrets/[a-z0-9-]+/[A-Za-z0-9._-]+")
# Custom resources: kubernetes-validate has no schema for them; the fields their controllers
# require are checked here.
CUSTOM_REQUIRED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector", "spec.endpoints"],
    ("monitoring.coreos.com/v1", "PrometheusRule"): ["spec.groups"],
    ("keda.sh/v1alpha1", "ScaledObject"): ["spec.scaleTargetRef.name", "spec.triggers"],
}

failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")


def helm(*args):
    return subprocess.run([HELM, *args], capture_output=True, text=True)


def render(values_file):
    lint = helm("lint", "--strict", str(CHART), "-f", str(values_file))
    if lint.returncode != 0:
        fail(values_file.name, f"helm lint --strict failed:\n{lint.stdout}{lint.stderr}")
    out = helm("template", "hooks", str(CHART), "--namespace", NAMESPACE, "-f", str(values_file))
    if out.returncode != 0:
        fail(values_file.name, f"helm template failed:\n{out.stderr}")
        return []
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def get(obj, dotted):
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def header(values_file, key):
    """Comma-separated names from a `# key: a, b` line at the top of a values file."""
    for line in values_file.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith(f"# {key}:"):
            return [n.strip() for n in line.split(":", 1)[1].split(",") if n.strip()]
    return []


def validate_schemas(where, doc):
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if (api, kind) in CUSTOM_REQUIRED:
        for field in CUSTOM_REQUIRED[(api, kind)]:
            if get(doc, field) in (None, [], {}):
                fail(where, f"{kind} lacks {field}")
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            fail(where, f"no Kubernetes {version} schema for {api} {kind}")
        except kubernetes_validate.ValidationError as e:
            fail(where, f"Kubernetes {version} schema: {e.message} at {'/'.join(map(str, e.path))}")


def check_metadata(where, doc):
    name = get(doc, "metadata.name") or ""
    rule = DNS1035_LABEL if doc["kind"] == "Service" else DNS1123_SUBDOMAIN
    limit = 63 if doc["kind"] == "Service" else 253
    if not rule.match(name) or len(name) > limit:
        fail(where, f"name {name!r} is not a valid {doc['kind']} name")
    for section in ("metadata.labels", "spec.template.metadata.labels", "spec.selector.matchLabels"):
        for key, value in (get(doc, section) or {}).items():
            label_name = key.split("/")[-1]
            if not LABEL_NAME.match(label_name) or len(label_name) > 63:
                fail(where, f"{section}: label key {key!r} is invalid")
            if not isinstance(value, str) or not LABEL_VALUE.match(value) or len(value) > 63:
                fail(where, f"{section}: label {key}={value!r} is not a valid label value")


def pods(docs):
    return [d for d in docs if d["kind"] in WORKLOADS]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_workload(where, doc, config, rendered):
    spec = doc["spec"]
    template = spec["template"]
    labels = get(template, "metadata.labels") or {}
    if not matches(spec["selector"]["matchLabels"], labels):
        fail(where, "spec.selector.matchLabels does not select the pod template's labels")
    pod = template["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    shutdown = duration_seconds(config["server"]["shutdown_timeout"])
    for c in pod["containers"]:
        pre_stop = get(c, "lifecycle.preStop.sleep.seconds") or 0
        if grace <= shutdown + pre_stop:
            fail(where, f"terminationGracePeriodSeconds {grace} is not longer than the preStop "
                        f"sleep ({pre_stop}) plus server.shutdown_timeout ({shutdown})")
        sc = c.get("securityContext") or {}
        psc = pod.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            fail(where, "the container may run as root")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(where, "allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(where, "the root file system is writable")
        if "ALL" not in (get(sc, "capabilities.drop") or []):
            fail(where, "capabilities are not all dropped")
        if get(psc, "seccompProfile.type") != "RuntimeDefault" and get(sc, "seccompProfile.type") != "RuntimeDefault":
            fail(where, "no RuntimeDefault seccomp profile")
        names = set()
        for port in c.get("ports", []):
            if not 1 <= port["containerPort"] <= 65535:
                fail(where, f"containerPort {port['containerPort']} is out of range")
            if "name" in port:
                if not IANA_SVC_NAME.match(port["name"]) or len(port["name"]) > 15:
                    fail(where, f"port name {port['name']!r} is invalid")
                names.add(port["name"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = get(c, f"{probe}.httpGet.port")
            if port is None:
                fail(where, f"{c['name']} has no {probe}")
            elif isinstance(port, str) and port not in names:
                fail(where, f"{probe} uses port {port!r}, which the container does not name")
        for kind in ("requests", "limits"):
            for resource, value in (get(c, f"resources.{kind}") or {}).items():
                if not QUANTITY.match(str(value)):
                    fail(where, f"resources.{kind}.{resource} {value!r} is not a quantity")
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])}
        # Kubernetes refuses a pod with two volumes of one name, or two mounts at one path.
        for what, items, key in (("volume", pod.get("volumes", []), "name"),
                                 ("volumeMount", c.get("volumeMounts", []), "mountPath")):
            seen = [item[key] for item in items]
            for dup in sorted({x for x in seen if seen.count(x) > 1}):
                fail(where, f"two {what}s with {key} {dup!r}")
        # Every mounted Secret's file the config names is under a mount of this container.
        paths = {m["mountPath"] for m in c.get("volumeMounts", [])}
        for used in sorted(set(SECRET_FILE.findall(yaml.safe_dump(config)))):
            if not any(used.startswith(p.rstrip("/") + "/") for p in paths):
                fail(where, f"the config names {used}, which no volumeMount of {c['name']} provides "
                            "(add it to secretMounts)")
        claims = {get(t, "metadata.name") for t in spec.get("volumeClaimTemplates", [])}
        for missing in mounts - volumes - claims:
            fail(where, f"volumeMount {missing!r} has no volume")
    for volume in pod.get("volumes", []):
        size = get(volume, "emptyDir.sizeLimit")
        if size is not None and not QUANTITY.match(str(size)):
            fail(where, f"emptyDir sizeLimit {size!r} is not a quantity")
    for claim in spec.get("volumeClaimTemplates", []):
        size = get(claim, "spec.resources.requests.storage")
        if not QUANTITY.match(str(size)):
            fail(where, f"volumeClaimTemplate storage {size!r} is not a quantity")
    if doc["kind"] == "StatefulSet":
        if spec.get("replicas") != 1:
            fail(where, "the embedded broker's StatefulSet must have exactly one replica")
        if spec.get("serviceName") not in rendered.get("Service", set()):
            fail(where, f"serviceName {spec.get('serviceName')!r} is not a rendered Service")


def check_references(where, docs, pre_existing):
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in pods(docs):
        pod = doc["spec"]["template"]["spec"]
        refs = []
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                refs.append(("Secret", volume["secret"]["secretName"]))
        for c in pod["containers"]:
            for env in c.get("env", []):
                if get(env, "valueFrom.secretKeyRef.name"):
                    refs.append(("Secret", env["valueFrom"]["secretKeyRef"]["name"]))
                if get(env, "valueFrom.configMapKeyRef.name"):
                    refs.append(("ConfigMap", env["valueFrom"]["configMapKeyRef"]["name"]))
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    refs.append(("Secret", source["secretRef"]["name"]))
                if "configMapRef" in source:
                    refs.append(("ConfigMap", source["configMapRef"]["name"]))
        for secret in pod.get("imagePullSecrets", []):
            refs.append(("Secret", secret["name"]))
        sa = pod.get("serviceAccountName")
        if sa and sa != "default":
            refs.append(("ServiceAccount", sa))
        for kind, name in refs:
            if (kind, name) not in rendered and name not in pre_existing:
                fail(where, f"{doc['kind']}/{doc['metadata']['name']} references {kind} {name!r}, "
                            "which is neither rendered nor listed as pre-existing")


def check_selectors(where, docs):
    pod_labels = [(d, d["spec"]["template"]["metadata"]["labels"]) for d in pods(docs)]
    workloads = {(d["kind"], d["metadata"]["name"]): d for d in pods(docs)}
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        what = f"{where} {kind}/{name}"
        if kind == "Service":
            selected = [(d, l) for d, l in pod_labels if matches(doc["spec"]["selector"], l)]
            if not selected:
                fail(what, "selects no pod")
            for port in doc["spec"]["ports"]:
                if not 1 <= port["port"] <= 65535:
                    fail(what, f"port {port['port']} is out of range")
                target = port.get("targetPort")
                if isinstance(target, str):
                    for d, _ in selected:
                        named = {p.get("name") for c in d["spec"]["template"]["spec"]["containers"]
                                 for p in c.get("ports", [])}
                        if target not in named:
                            fail(what, f"targetPort {target!r} is not a port of {d['kind']}/{d['metadata']['name']}")
        elif kind in ("PodDisruptionBudget", "NetworkPolicy"):
            selector = get(doc, "spec.selector.matchLabels") or get(doc, "spec.podSelector.matchLabels") or {}
            if not any(matches(selector, l) for _, l in pod_labels):
                fail(what, "selects no pod")
        elif kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            target = doc["spec"]["scaleTargetRef"]
            if (target.get("kind", "Deployment"), target["name"]) not in workloads:
                fail(what, f"scales {target['name']!r}, which is not a rendered workload")
        elif kind == "ServiceMonitor":
            selector = doc["spec"]["selector"]["matchLabels"]
            services = [d for d in docs if d["kind"] == "Service" and matches(selector, d["metadata"].get("labels", {}))]
            if not services:
                fail(what, "selects no Service")
            for endpoint in doc["spec"]["endpoints"]:
                if not any(endpoint["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in services):
                    fail(what, f"endpoint port {endpoint['port']!r} is not a port of the Services it selects")
        elif kind == "Ingress":
            services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
            for rule in doc["spec"].get("rules", []):
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    service = services.get(backend["name"])
                    if service is None:
                        fail(what, f"routes to Service {backend['name']!r}, which is not rendered")
                    elif backend["port"].get("name") not in {p.get("name") for p in service["spec"]["ports"]}:
                        fail(what, f"routes to port {backend['port']} that Service {backend['name']} lacks")


def duration_seconds(text):
    number, unit = re.fullmatch(r"([0-9.]+)(ms|s|m|h|d)", text).groups()
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def check_config(where, docs, config_text):
    """The rendered config passes the real binary's check-config, with the environment the
    rendered pods get (secrets stand in as a placeholder)."""
    for doc in pods(docs):
        for c in doc["spec"]["template"]["spec"]["containers"]:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            for entry in c.get("env", []):
                env[entry["name"]] = entry["value"] if "value" in entry else PLACEHOLDER_SECRET
            unset = [m.group(1) for m in VAR.finditer(config_text) if m.group(2) is None and m.group(1) not in env]
            if unset and not c.get("envFrom"):
                fail(where, f"{doc['metadata']['name']}: the config needs {', '.join(sorted(set(unset)))}, "
                            "which no env entry provides (and there is no envFrom)")
            for name in unset:
                env[name] = PLACEHOLDER_SECRET
            args = c.get("args", [])
            role = args[args.index("--role") + 1] if "--role" in args else "all"
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                f.write(config_text)
                f.flush()
                # The Secrets' files are mounted in the pod, not here: checked above instead.
                result = subprocess.run([BIN, "check-config", "--skip-files", "--config", f.name],
                                        env=env, capture_output=True, text=True)
            if result.returncode != 0:
                fail(where, f"{doc['metadata']['name']} ({role}): hookbridge check-config refused "
                            f"the rendered config:\n{result.stdout}{result.stderr}")


def exported_metric_names():
    """The series names src/metrics.rs registers: under the `hookbridge_` prefix, and the
    conventional `process_*` ones, with the suffixes OpenMetrics gives them (counters
    `_total`, units, histograms' parts)."""
    source = (ROOT / "src" / "metrics.rs").read_text()
    found = []
    # Each series is registered as `add(r, "name", ...)`, or `add_seconds(r, ...)` for one
    # counted in seconds.
    for match in re.finditer(r'\badd(_seconds)?\(\s*r,\s*"([a-z_]+)"', source):
        found.append("hookbridge_" + match.group(2) + ("_seconds" if match.group(1) else ""))
    # The process's: `registry.register("process_x", ...)`, or `register_with_unit("process_x",
    # "help", Unit::Seconds, ...)`.
    for match in re.finditer(r'\.register(?:_with_unit)?\(\s*"(process_[a-z_]+)",\s*"[^"]*",\s*(?:Unit::(\w+))?',
                             source):
        found.append(match.group(1) + (f"_{match.group(2).lower()}" if match.group(2) else ""))
    names = set()
    for name in found:
        names |= {name, name + "_total", name + "_bucket", name + "_sum", name + "_count"}
    return names


def end_to_end_buckets():
    """The bucket bounds of hookbridge_delivery_end_to_end_seconds, from src/metrics.rs."""
    source = (ROOT / "src" / "metrics.rs").read_text()
    body = re.search(r"fn end_to_end_buckets\(\) -> Histogram \{(.*?)\n\}", source, re.S).group(1)
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?", body)]


def github_anchor(heading):
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped, spaces
    to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def operations_anchors():
    text = (ROOT / "docs" / "operations.md").read_text()
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


# The series a dashboard query selects: each is written with its matchers (`name{...}`), as
# every query needs the namespace and job variables; a variable's is label_values' first
# argument.
METRIC_IN_EXPR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
LABEL_VALUES_METRIC = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def dashboard_panels(dashboard):
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard):
    """(where, PromQL with Grafana's variables in it, legend) of every panel's target."""
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}", \
                target.get("expr", ""), target.get("legendFormat", "")


def dashboard_metric_names(dashboard):
    """{metric name: where} of every series the panels and variables select."""
    names = {}
    for where, expr, _ in dashboard_queries(dashboard):
        for name in METRIC_IN_EXPR.findall(expr):
            names.setdefault(name, where)
    for variable in dashboard["templating"]["list"]:
        for name in LABEL_VALUES_METRIC.findall(str(variable.get("query", ""))):
            names.setdefault(name, f"variable {variable['name']}")
    return names


def check_dashboard_json(where, dashboard):
    """The dashboard is sound: unique panel ids, every query on the datasource variable,
    a description on every panel, only series hookbridge exports."""
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("datasource")
    if not source or source.get("type") != "datasource" or source.get("query") != "prometheus":
        fail(where, "the dashboard needs a `datasource` variable of type datasource, query prometheus")
    for name, variable in variables.items():
        if name != "datasource" and variable.get("datasource") != DATASOURCE:
            fail(where, f"variable {name} does not query ${{datasource}}: {variable.get('datasource')}")
    if "subscription" not in variables:
        fail(where, "the dashboard has no `subscription` variable")
    ids = [p.get("id") for p in dashboard_panels(dashboard)]
    for dup in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        fail(where, f"two panels have id {dup}")
    for panel in dashboard_panels(dashboard):
        what = f"{where} panel {panel.get('id')} {panel.get('title')!r}"
        if not isinstance(panel.get("id"), int):
            fail(what, "has no integer id")
        grid = panel.get("gridPos", {})
        if grid.get("x", 0) + grid.get("w", 0) > 24:
            fail(what, f"is wider than the dashboard's 24 columns: {grid}")
        if panel.get("type") == "row":
            continue
        if not panel.get("description", "").strip():
            fail(what, "has no description (say what to do when it looks wrong)")
        if panel.get("datasource") != DATASOURCE:
            fail(what, f"does not use the datasource variable: {panel.get('datasource')}")
        targets = panel.get("targets", [])
        if not targets:
            fail(what, "has no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            fail(what, f"repeats a refId: {refs}")
        for target in targets:
            if target.get("datasource") != DATASOURCE:
                fail(what, f"target {target.get('refId')} does not use the datasource variable")
            if not target.get("expr", "").strip():
                fail(what, f"target {target.get('refId')} has no expr")
    exported = exported_metric_names()
    for name, used in dashboard_metric_names(dashboard).items():
        if name not in exported:
            fail(where, f"{used} selects {name}, which hookbridge does not export")


def check_dashboard(where, docs, values):
    """The dashboard ConfigMap is rendered when `dashboards.enabled`, with the sidecar's
    label and folder annotation, and holds a sound dashboard."""
    settings = values.get("dashboards", {})
    maps = [d for d in docs if d["kind"] == "ConfigMap" and "hookbridge.json" in d.get("data", {})]
    if not settings.get("enabled"):
        if maps:
            fail(where, "a dashboard ConfigMap is rendered although dashboards.enabled is off")
        return
    if len(maps) != 1:
        fail(where, f"expected one dashboard ConfigMap, found {len(maps)}")
        return
    meta = maps[0]["metadata"]
    for key, value in settings.get("labels", {"grafana_dashboard": "1"}).items():
        if meta.get("labels", {}).get(key) != value:
            fail(where, f"the dashboard ConfigMap lacks the sidecar's label {key}={value!r}")
    folder = settings.get("folder")
    annotation = settings.get("folderAnnotation", "grafana_folder")
    if folder and meta.get("annotations", {}).get(annotation) != folder:
        fail(where, f"the dashboard ConfigMap lacks the folder annotation {annotation}={folder!r}")
    try:
        dashboard = json.loads(maps[0]["data"]["hookbridge.json"])
    except json.JSONDecodeError as e:
        fail(where, f"the dashboard is not JSON: {e}")
        return
    check_dashboard_json(f"{where} dashboard", dashboard)


def check_prometheus_rules(where, docs, values):
    """The rules parse (promtool, from Debian's prometheus), name only series hookbridge
    exports, and every alert links to its runbook section in docs/operations.md."""
    exported = exported_metric_names()
    anchors = operations_anchors()
    base = values.get("prometheusRule", {}).get("runbookBaseUrl",
                                                  "https://github.com/hookbridge/hookbridge/blob/main/docs/operations.md")
    for doc in docs:
        if doc["kind"] != "PrometheusRule":
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump({"groups": doc["spec"]["groups"]}, f)
            f.flush()
            result = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        if result.returncode != 0:
            fail(where, f"promtool refused the PrometheusRule:\n{result.stdout}{result.stderr}")
        for group in doc["spec"]["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                for metric in re.findall(r"\bhookbridge_[a-z_]+", rule["expr"]):
                    if metric not in exported:
                        fail(where, f"rule {name} uses {metric}, which hookbridge does not export")
                if "alert" not in rule:
                    continue
                annotations = rule.get("annotations", {})
                url = annotations.get("runbook_url", "")
                if url != f"{base}#{name.lower()}":
                    fail(where, f"alert {name}: runbook_url {url!r} is not {base}#{name.lower()}")
                if name.lower() not in anchors:
                    fail(where, f"alert {name} has no runbook section (a heading `{name}`) in docs/operations.md")
                if not annotations.get("summary"):
                    fail(where, f"alert {name} has no summary")


def check_slo_threshold():
    """The latency threshold the schema allows are the end-to-end histogram's bucket bounds:
    a bound that is not one would make the SLO's `le` match nothing."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = schema["properties"]["slo"]["properties"]["latency"]["properties"]["threshold"]["enum"]
    buckets = end_to_end_buckets()
    if [float(a) for a in allowed] != buckets:
        fail("values.schema.json", f"slo.latency.threshold allows {allowed}; the end-to-end "
                                   f"buckets in src/metrics.rs are {buckets}")


def check_scaling(where, docs, config):
    partitions = config["broker"].get(config["broker"]["kind"], {}).get("partitions", 8)
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            if doc["spec"]["maxReplicaCount"] > int(partitions):
                fail(where, f"KEDA may scale to {doc['spec']['maxReplicaCount']} replicas, more than "
                            f"the {partitions} partitions")
            groups = {t["metadata"]["consumerGroup"] for t in doc["spec"]["triggers"]}
            wanted = {f"hookbridge.{s['name']}" for s in config["subscriptions"]}
            if groups != wanted:
                fail(where, f"KEDA triggers on groups {sorted(groups)}, the subscriptions are {sorted(wanted)}")


def check_values_file(values_file):
    where = values_file.name
    docs = render(values_file)
    if not docs:
        return
    rendered = {}
    for doc in docs:
        rendered.setdefault(doc["kind"], set()).add(doc["metadata"]["name"])
    configmaps = [d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})]
    if len(configmaps) != 1:
        fail(where, "expected one ConfigMap with config.yaml")
        return
    config_text = configmaps[0]["data"]["config.yaml"]
    config = yaml.safe_load(config_text)
    for doc in docs:
        what = f"{where} {doc['kind']}/{doc['metadata']['name']}"
        validate_schemas(what, doc)
        check_metadata(what, doc)
        if doc["kind"] in WORKLOADS:
            check_workload(what, doc, config, rendered)
    check_references(where, docs, set(header(values_file, "pre-existing")))
    check_selectors(where, docs)
    check_scaling(where, docs, config)
    values = yaml.safe_load(values_file.read_text()) or {}
    check_prometheus_rules(where, docs, values)
    check_dashboard(where, docs, values)
    check_config(where, docs, config_text)
    kinds = sorted(f"{k}×{len(v)}" for k, v in rendered.items())
    print(f"ok   {where}: {len(docs)} objects ({', '.join(kinds)})")


def check_bad_values(values_file):
    expect = header(values_file, "expect")
    if not expect:
        fail(values_file.name, "a bad values file needs an `# expect: text` header")
        return
    result = helm("template", "hooks", str(CHART), "--namespace", NAMESPACE, "-f", str(values_file))
    message = result.stdout + result.stderr
    if result.returncode == 0:
        fail(f"bad/{values_file.name}", "was accepted")
    elif not all(e in message for e in expect):
        fail(f"bad/{values_file.name}", f"refused, but without naming {expect}:\n{message}")
    else:
        print(f"ok   bad/{values_file.name}: refused naming {', '.join(expect)}")


def main():
    good = sorted((CHART / "ci").glob("*-values.yaml"))
    bad = sorted((CHART / "ci" / "bad").glob("*.yaml"))
    if len(good) < 5 or not bad:
        sys.exit("expected at least five ci/*-values.yaml and some ci/bad/*.yaml")
    check_slo_threshold()
    for values_file in good:
        check_values_file(values_file)
    for values_file in bad:
        check_bad_values(values_file)
    if failures:
        print(f"\n{len(failures)} chart check(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        sys.exit(1)
    print(f"\nchart: {len(good)} values files rendered and checked against Kubernetes "
          f"{', '.join(KUBERNETES_VERSIONS)}; {len(bad)} bad values files refused")


if __name__ == "__main__":
    main()
