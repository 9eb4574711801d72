"""Every query of the chart's Grafana dashboard and PrometheusRule, run against a real
Prometheus that scrapes a real hookbridge under load; the SLO alerts must fire for the
subscriptions that break their objectives, and only for those.

Run by scripts/chart-test, which provides HELM (the official binary) and HOOKBRIDGE_BIN, with
a Python that has PyYAML. Needs `prometheus` on PATH (Debian's package; scripts/chart-test
installs it): without it this fails, it does not skip.

What it sets up (well under a minute when it passes, on a busy 2-core machine too):
- the chart rendered with the dashboard and the PrometheusRule on, the SLO windows shortened
  from hours to seconds and the latency threshold at 1 s (exported as `le="1.0"`, so the
  rules' bucket matcher is tried on a bound Prometheus may store either way);
- one receiver with three paths: /ok answers 200, /fail 500, /slow 200 after 1.2 s;
- `hookbridge serve` on the embedded broker, with subscriptions `healthy`, `failing` (short
  retries, so events are parked and dead-lettered within seconds) and `slow`, all on the
  topic the route `orders` writes; a route `hasty` whose publish_timeout (1 ms) is shorter
  than the log's fsync of a 200 KB body, so some of its webhooks get 503 (on most disks; when
  none does, the ingress alert's series are checked without its status matcher); and an OTLP
  endpoint where nothing listens, so trace spans are dropped;
- Prometheus scraping it every second with the target labels a ServiceMonitor gives
  (namespace, job, pod), evaluating the rendered rule groups every second;
- webhooks posted while the checks run, a config change that is applied and, later, one
  that is refused; at the end hookbridge is stopped.

What it checks:
- the failing subscription's delivery SLO alerts and the slow one's latency SLO alerts
  fire (polled on /api/v1/alerts), and no delivery SLO alert fires for the healthy one;
- every dashboard variable's label_values query returns values, and with them substituted
  as Grafana would, every panel's query returns series that carry the labels its legend
  names;
- every series a dashboard or rule query names is one hookbridge's /metrics shows;
- every recording rule records series, and every alert's expression either holds or, with
  its threshold cut off, returns series (HookbridgeDown's once hookbridge is stopped).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from check_chart import BIN, CHART, HELM, METRIC_IN_EXPR, NAMESPACE, dashboard_metric_names, dashboard_queries

RELEASE = "hooks"

# The chart as the test installs it: windows of seconds instead of hours (the pairs keep the
# workbook's burn rates), and a latency threshold the slow receiver's answers exceed.
TEST_VALUES = {
    "dashboards": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "slo": {
        "latency": {"threshold": 1},
        "page": [
            {"longWindow": "20s", "shortWindow": "5s", "burnRate": 14.4},
            {"longWindow": "40s", "shortWindow": "10s", "burnRate": 6},
        ],
        "ticket": [
            {"longWindow": "1m", "shortWindow": "15s", "burnRate": 3},
            {"longWindow": "2m", "shortWindow": "20s", "burnRate": 1},
        ],
    },
}
# Which SLO alert must fire for which subscription.
MUST_FIRE = {
    ("HookbridgeDeliveryBudgetBurnFast", "failing"),
    ("HookbridgeDeliveryBudgetBurnSlow", "failing"),
    ("HookbridgeLatencyBudgetBurnFast", "slow"),
    ("HookbridgeLatencyBudgetBurnSlow", "slow"),
}
# Its receiver never fails: a delivery SLO alert for it would be a wrong alert.
MUST_NOT_FIRE = {("HookbridgeDeliveryBudgetBurnFast", "healthy"), ("HookbridgeDeliveryBudgetBurnSlow", "healthy")}
# What Grafana puts for its built-in interval variables (the test's data spans minutes).
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
SLOW_RECEIVER_SECONDS = 1.2
# Generous for a busy 2-core machine; every wait polls and ends as soon as it is met.
TIMEOUT = 150

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}", file=sys.stderr, flush=True)


def render(work):
    values = work / "values.yaml"
    values.write_text(yaml.safe_dump(TEST_VALUES))
    out = subprocess.run([HELM, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(values)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"helm template failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def prometheus_rule_groups(docs):
    """The groups of the rendered PrometheusRule, as a Prometheus rule file holds them."""
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    return rules[0]["spec"]["groups"] if rules else None


class Receiver(BaseHTTPRequestHandler):
    """/ok: 200; /fail: 500; /slow: 200 after SLOW_RECEIVER_SECONDS."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/slow":
            time.sleep(SLOW_RECEIVER_SECONDS)
        status = 500 if self.path == "/fail" else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hookbridge_config(work, receiver):
    return f"""broker:
  kind: embedded
  embedded: {{ dir: {work}/data, partitions: 4 }}
server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  shutdown_timeout: 5s
routes:
  - name: orders
    topic: orders
    verify: {{ kind: none }}
    key: {{ json: /key }}
  # Its publish_timeout is shorter than the embedded log's fsync of a large body: some of
  # its webhooks are answered 503, for the ingress error queries.
  - name: hasty
    topic: hasty
    verify: {{ kind: none }}
    publish_timeout: 1ms
subscriptions:
  - name: healthy
    topics: [orders]
    url: {receiver}/ok
    timeout: 10s
  # Three quick attempts, then the dead-letter topic; parked after two seconds of failing;
  # a breaker that stays closed, so attempts (and their failures) keep coming.
  - name: failing
    topics: [orders]
    url: {receiver}/fail
    retry: {{ initial_backoff: 100ms, max_backoff: 200ms, max_attempts: 3, park_after: 2s }}
    breaker: {{ failures: 1000000, cool_down: 1s }}
  - name: slow
    topics: [orders]
    url: {receiver}/slow
"""


def start_hookbridge(work, config_path, otlp_port):
    log = open(work / "hookbridge.log", "w")
    env = dict(os.environ, RUST_LOG="info,fjall=warn,lsm_tree=warn",
               # Nothing listens there: every export fails and its spans are counted dropped.
               OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}", OTEL_BSP_SCHEDULE_DELAY="500")
    process = subprocess.Popen([BIN, "serve", "--log-format", "json", "--config", str(config_path)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in (work / "hookbridge.log").read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("message") == "hookbridge is serving":
                return process, event["ingress"], event["admin"]
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    sys.exit(f"hookbridge did not start; its log:\n{(work / 'hookbridge.log').read_text()[-5000:]}")


def start_prometheus(work, admin, job, groups):
    (work / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    # The target labels prometheus-operator gives a ServiceMonitor's targets, which the
    # rules and the dashboard select on.
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "rules.yaml")],
        "scrape_configs": [{
            "job_name": job,
            "static_configs": [{"targets": [admin],
                                "labels": {"namespace": NAMESPACE, "pod": f"{RELEASE}-hookbridge-0"}}],
        }],
    }))
    port = free_port()
    log = open(work / "prometheus.log", "w")
    process = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    return process, f"http://127.0.0.1:{port}"


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


class Refused(Exception):
    """Prometheus refused a query (a syntax error, an unknown function): waiting cannot help."""


class Prometheus:
    def __init__(self, url, work):
        self.url = url
        self.work = work

    def api(self, path, **params):
        """The `data` of a Prometheus API answer; raises Refused with Prometheus' error."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            body = get_json(f"{self.url}/api/v1/{path}?{query}")
        except urllib.error.HTTPError as e:
            raise Refused(f"Prometheus refused {path} {params}: {json.load(e).get('error')}") from None
        return body["data"]

    def query(self, promql):
        return self.api("query", query=promql)["result"]

    def wait_ready(self):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        sys.exit(f"Prometheus did not get ready; its log:\n{(self.work / 'prometheus.log').read_text()[-5000:]}")

    def wait_for(self, what, check, timeout=TIMEOUT):
        """Polls `check()` until it returns a true value; fails naming `what` after `timeout`.
        Once something has failed, waits are cut to 10 s: the first failure is the one to
        read, and the rest should not take many minutes to report."""
        if failures:
            timeout = min(timeout, 10)
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = check()
            except Refused as e:
                fail(f"{what}: {e}")
                return None
            if got:
                return got
            if time.monotonic() > deadline:
                fail(f"{what}: not within {timeout} s")
                return None
            time.sleep(0.5)


class Load:
    """Webhooks to `orders`, about 20 a second over 20 keys, and to `hasty`, four 200 KB ones
    at once every second (the log writes them one after another, so even on a fast disk
    the later ones wait past its 1 ms), until stopped or for at most max_seconds."""

    def __init__(self, ingress, max_seconds=300):
        self.ingress = ingress
        self.stop_at = time.monotonic() + max_seconds
        self.stopped = threading.Event()
        self.answers = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.post, args=("orders", 0.05, 200), daemon=True)]
        self.threads += [threading.Thread(target=self.post, args=("hasty", 1, 200_000), daemon=True)
                         for _ in range(4)]
        for t in self.threads:
            t.start()

    def post(self, route, pause, size):
        n = 0
        while not self.stopped.is_set() and time.monotonic() < self.stop_at:
            body = json.dumps({"key": f"k{n % 20}", "n": n, "pad": "x" * size}).encode()
            request = urllib.request.Request(f"http://{self.ingress}/hooks/{route}", data=body,
                                             headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status = response.status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError:
                status = "error"
            with self.lock:
                self.answers[(route, status)] = self.answers.get((route, status), 0) + 1
            n += 1
            # On the second, so the hasty posters' webhooks arrive together.
            self.stopped.wait(pause - time.time() % pause)

    def stop(self):
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=40)


def prom_regex(values):
    """Grafana's rendering of a multi-value variable in a `=~` matcher: (a|b), each value's
    regex metacharacters escaped (the backslash doubled inside a PromQL string)."""
    return "(" + "|".join(re.sub(r"([.+*?()|\[\]{}^$\\])", r"\\\\\1", v) for v in sorted(values)) + ")"


def substitute(text, variables):
    """`text` with Grafana's `$name` and `${name}` replaced; stops on one it does not know."""
    def one(match):
        name = match.group(1) or match.group(2)
        if name not in variables:
            sys.exit(f"{text!r} uses ${name}, which the test does not know how to fill in")
        return variables[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def resolve_variables(prometheus, dashboard):
    """Each query variable's values, as Grafana finds them (label_values over the series
    API), in order, so later ones see the earlier ones; fails a variable that finds none."""
    variables = dict(GRAFANA_INTERVALS)
    found = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"].strip())
        if not match:
            sys.exit(f"variable {variable['name']}: cannot read its query {variable['query']!r}")
        selector, label = substitute(match.group(1), variables), match.group(2)
        values = prometheus.wait_for(
            f"variable {variable['name']}: label_values({selector}, {label}) has values",
            lambda: prometheus.api(f"label/{label}/values", **{"match[]": selector}), timeout=60)
        found[variable["name"]] = values or []
        variables[variable["name"]] = prom_regex(values or ["no-value"])
        print(f"ok   variable {variable['name']}: {', '.join(values or [])}", flush=True)
    return variables, found


def firing(prometheus):
    """(alert name, subscription) of every alert firing now."""
    alerts = prometheus.api("alerts")["alerts"]
    return {(a["labels"]["alertname"], a["labels"].get("subscription")) for a in alerts if a["state"] == "firing"}


def check_alerts_fire(prometheus):
    """Polls /api/v1/alerts until every alert of MUST_FIRE fires; fails any of MUST_NOT_FIRE
    seen meanwhile."""
    wrong = set()

    def all_fire():
        now = firing(prometheus)
        wrong.update(now & MUST_NOT_FIRE)
        return MUST_FIRE <= now

    if prometheus.wait_for(f"the SLO alerts {sorted(MUST_FIRE)} fire", all_fire):
        print(f"ok   firing: {', '.join(f'{a} for {s}' for a, s in sorted(MUST_FIRE))}", flush=True)
    return wrong


def check_quiet(wrong):
    for alert, subscription in sorted(wrong):
        fail(f"{alert} fired for {subscription}, whose receiver never fails")
    if not wrong:
        print(f"ok   not firing: {', '.join(f'{a} for {s}' for a, s in sorted(MUST_NOT_FIRE))}", flush=True)


def check_panels(prometheus, dashboard, variables):
    """Every panel's query returns series, each with the labels its legend names."""
    for where, expr, legend in dashboard_queries(dashboard):
        promql = substitute(expr, variables)
        result = prometheus.wait_for(f"{where}: `{promql}` returns data", lambda: prometheus.query(promql))
        if not result:
            continue
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            if not all(label in series["metric"] for series in result):
                fail(f"{where}: its legend shows {{{{{label}}}}}, which its series lack: "
                     f"{[s['metric'] for s in result][:3]}")
        print(f"ok   {where}: {len(result)} series", flush=True)


def exported_series(admin):
    """The series names hookbridge's /metrics shows."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            for line in text.splitlines() if line and not line.startswith("#")}


def check_names(admin, dashboard, groups):
    """Every series a dashboard or rule query selects is in /metrics (the rules' own
    recorded series and Prometheus' `up` aside)."""
    exported = exported_series(admin)
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    used = dashboard_metric_names(dashboard)
    for group in groups:
        for rule in group["rules"]:
            for name in METRIC_IN_EXPR.findall(rule["expr"]):
                used.setdefault(name, f"rule {rule.get('alert') or rule.get('record')}")
    for name, where in sorted(used.items()):
        if name not in exported and name not in recorded and name != "up":
            fail(f"{where} selects {name}, which hookbridge's /metrics does not show")
    print(f"ok   {len(used)} series named by the queries, each in /metrics or recorded", flush=True)


COMPARISON = re.compile(r"==|!=|>=|<=|>|<")


def without_threshold(expr):
    """The query before an alert's first top-level comparison (`sum(x) > 10` gives
    `sum(x)`), or None when it has none."""
    depth, quote, i = 0, None, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and COMPARISON.match(expr, i):
            return expr[:i].strip()
        i += 1
    return None


def check_rules(prometheus, groups, skip=()):
    """Every recording rule records series; every alert's expression holds or, without its
    threshold, returns series."""
    for group in groups:
        for rule in group["rules"]:
            if "record" in rule:
                name = rule["record"]
                if prometheus.wait_for(f"recording rule {name} records series",
                                       lambda: prometheus.query(name), timeout=60):
                    print(f"ok   recording rule {name}", flush=True)
                continue
            name, expr = rule["alert"], rule["expr"]
            if name in skip:
                continue
            check_alert_expression(prometheus, name, expr)


def check_alert_expression(prometheus, name, expr):
    query = without_threshold(expr)

    def data():
        if prometheus.query(expr):
            return "its expression holds"
        if query and prometheus.query(query):
            return f"without its threshold, `{query}` returns series"
        # Whether `hasty` answers 503s depends on the disk's speed (a tmpfs or a write-back
        # cache may commit within its 1 ms): when no route did, the series the expression
        # reads must at least be there.
        loose = query and re.sub(r',\s*status=~"5\.\."', "", query)
        if loose and loose != query and prometheus.query(loose):
            return f"without its threshold and status matcher (no 5xx yet), `{loose}` returns series"
        return None

    said = prometheus.wait_for(f"alert {name}: `{expr}` (or the query before its threshold) returns data", data)
    if said:
        print(f"ok   alert {name}: {said}", flush=True)


def main():
    if not shutil.which("prometheus"):
        sys.exit("prometheus not found: install Debian's prometheus package (scripts/chart-test does)")
    work = Path(tempfile.mkdtemp(prefix="hookbridge-queries-"))
    processes = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    load = None
    try:
        docs = render(work)
        groups = prometheus_rule_groups(docs)
        dashboards = [d for d in docs if d["kind"] == "ConfigMap" and "hookbridge.json" in d.get("data", {})]
        admin_service = [d for d in docs if d["kind"] == "Service"
                         and d["metadata"].get("labels", {}).get("hookbridge.io/service") == "admin"]
        if not groups or len(dashboards) != 1 or len(admin_service) != 1:
            sys.exit("the chart rendered no PrometheusRule, dashboard ConfigMap or admin Service")
        dashboard = json.loads(dashboards[0]["data"]["hookbridge.json"])
        # A ServiceMonitor's targets get the Service's name as their job.
        job = admin_service[0]["metadata"]["name"]

        config_path = work / "config.yaml"
        config = hookbridge_config(work, f"http://127.0.0.1:{receiver.server_address[1]}")
        config_path.write_text(config)
        hookbridge, ingress, admin = start_hookbridge(work, config_path, free_port())
        processes.append(hookbridge)
        prometheus_process, url = start_prometheus(work, admin, job, groups)
        processes.append(prometheus_process)
        prometheus = Prometheus(url, work)
        prometheus.wait_ready()
        prometheus.wait_for("Prometheus scrapes hookbridge (up == 1)",
                            lambda: prometheus.query(f'up{{job="{job}"}} == 1'), timeout=60)
        started = time.monotonic()
        load = Load(ingress)

        # A change that applies: the healthy subscription's timeout.
        config_path.write_text(config.replace("timeout: 10s", "timeout: 9s"))
        prometheus.wait_for("hookbridge applies a changed config",
                            lambda: prometheus.query('hookbridge_config_reloads_total{outcome="applied"} > 0'),
                            timeout=60)

        wrong = check_alerts_fire(prometheus)
        variables, found = resolve_variables(prometheus, dashboard)
        if not {"healthy", "failing", "slow"} <= set(found.get("subscription", [])):
            fail(f"the subscription variable found {found.get('subscription')}, not every subscription")
        check_panels(prometheus, dashboard, variables)
        check_names(admin, dashboard, groups)

        # A change that is refused: the running config stays, and says so in its metrics.
        config_path.write_text(config + "  - name: broken\n")
        prometheus.wait_for("hookbridge refuses a broken config",
                            lambda: prometheus.query("hookbridge_config_last_reload_successful == 0"), timeout=60)
        check_rules(prometheus, groups, skip={"HookbridgeDown"})
        check_quiet(wrong | (firing(prometheus) & MUST_NOT_FIRE))

        load.stop()
        hookbridge.send_signal(signal.SIGTERM)
        try:
            hookbridge.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hookbridge.kill()
            fail("hookbridge did not stop within 30 s of SIGTERM")
        down = [r for g in groups for r in g["rules"] if r.get("alert") == "HookbridgeDown"]
        for rule in down:
            check_alert_expression(prometheus, rule["alert"], rule["expr"])
        print(f"     webhooks answered: {dict(sorted((f'{r} {s}', n) for (r, s), n in load.answers.items()))}; "
              f"{time.monotonic() - started:.0f} s from the first webhook", flush=True)
    finally:
        if load:
            load.stop()
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        receiver.shutdown()
        if failures:
            for name in ("hookbridge.log", "prometheus.log"):
                path = work / name
                if path.exists():
                    print(f"\n--- the last lines of {name}:\n" + "\n".join(path.read_text().splitlines()[-30:]),
                          file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"\n{len(failures)} query check(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        sys.exit(1)
    print("\nqueries: every dashboard panel and every rule ran against Prometheus scraping hookbridge, "
          "and the SLO alerts fired where they must")


if __name__ == "__main__":
    main()
