#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s (check.py says what is checked):
# every built-in kind strictly against the Kubernetes schema (kubernetes-validate), the
# ServiceMonitor against schemas/, and the references between the manifests. When kubectl
# is installed, the kustomize output is validated too.
#
#   deploy/k8s/check.sh
#
# Environment:
#   VENV                 Python venv with kubernetes-validate (deploy/local/requirements.txt;
#                        default .venv, relative to the repository root)
#   KUBERNETES_VERSION   the version to validate against (default: the newest kubernetes-validate knows)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
VENV="${VENV:-.venv}"
PYTHON="$VENV/bin/python"

die() {
    echo "k8s check: $*" >&2
    exit 1
}

[[ -x "$PYTHON" ]] || die "no Python in $VENV (set VENV, or create it with deploy/local/requirements.txt)"
"$PYTHON" -c 'import kubernetes_validate' 2>/dev/null ||
    die "kubernetes-validate is not installed in $VENV (pip install -r deploy/local/requirements.txt)"

args=(deploy/k8s)
if [[ -n "${KUBERNETES_VERSION:-}" ]]; then
    args+=(--version "$KUBERNETES_VERSION")
fi

rendered=""
cleanup() {
    if [[ -n "$rendered" ]]; then rm -f "$rendered"; fi
}
trap cleanup EXIT
if command -v kubectl >/dev/null; then
    rendered=$(mktemp)
    kubectl kustomize deploy/k8s >"$rendered" || die "kubectl kustomize deploy/k8s failed"
    args+=(--rendered "$rendered")
else
    echo "k8s check: kubectl not found: the kustomize output is not checked (the manifests are)"
fi

echo "k8s check: kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)"
"$PYTHON" deploy/k8s/check.py "${args[@]}"
