#!/usr/bin/env bash
# Creates the Secrets the manifests read (never committed, never generated from the repo):
#
#   pi-secrets   DATABASE_URL, REDIS_URL (optional), PI_ADMIN_TOKEN, PI_SERVICE_TOKEN,
#                PI_MASTER_KEYS
#   pi-edge-tls  the edge's TLS certificate and key (type kubernetes.io/tls)
#
# Usage:
#   DATABASE_URL=postgresql://pi:PASSWORD@postgres.example:5432/pi \
#   REDIS_URL=redis://redis.example:6379/0 \
#   TLS_CERT=edge.crt TLS_KEY=edge.key \
#   k8s/create-secrets.sh            # create them in the cluster (kubectl's current context)
#   k8s/create-secrets.sh --print    # print them as YAML instead (for sops, sealed-secrets...)
#
# PI_ADMIN_TOKEN, PI_SERVICE_TOKEN and PI_MASTER_KEYS are generated at random unless set.
# The script only creates: it fails if a Secret already exists, because new master keys
# would make the data encrypted with the old ones unreadable. To rotate the master key,
# add a version (PI_MASTER_KEYS=1=<old>,2=<new>) and replace the Secret deliberately.
set -euo pipefail

NAMESPACE="${NAMESPACE:-pi}"
mode=create
case "${1:-}" in
  --print) mode=print ;;
  "") ;;
  *) echo "usage: $0 [--print]" >&2; exit 2 ;;
esac

: "${DATABASE_URL:?DATABASE_URL is required (postgresql://user:password@host:5432/db)}"
random_token() { head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }
PI_ADMIN_TOKEN="${PI_ADMIN_TOKEN:-adm_$(random_token)}"
PI_SERVICE_TOKEN="${PI_SERVICE_TOKEN:-svc_$(random_token)}"
PI_MASTER_KEYS="${PI_MASTER_KEYS:-1=$(head -c 32 /dev/urandom | base64 | tr -d '\n')}"

# Values go through files, not the command line, so they never show in `ps`.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
umask 077
printf '%s' "$DATABASE_URL" >"$tmp/DATABASE_URL"
printf '%s' "$PI_ADMIN_TOKEN" >"$tmp/PI_ADMIN_TOKEN"
printf '%s' "$PI_SERVICE_TOKEN" >"$tmp/PI_SERVICE_TOKEN"
printf '%s' "$PI_MASTER_KEYS" >"$tmp/PI_MASTER_KEYS"
files=(DATABASE_URL PI_ADMIN_TOKEN PI_SERVICE_TOKEN PI_MASTER_KEYS)
if [[ -n "${REDIS_URL:-}" ]]; then
  printf '%s' "$REDIS_URL" >"$tmp/REDIS_URL"
  files+=(REDIS_URL)
fi
args=()
for name in "${files[@]}"; do args+=("--from-file=$name=$tmp/$name"); done

secret() {
  if [[ $mode == print ]]; then
    kubectl create --dry-run=client -o yaml --namespace "$NAMESPACE" secret "$@"
    echo "---"
  else
    kubectl create --namespace "$NAMESPACE" secret "$@"
  fi
}

secret generic pi-secrets "${args[@]}"
if [[ -n "${TLS_CERT:-}" && -n "${TLS_KEY:-}" ]]; then
  secret tls pi-edge-tls --cert "$TLS_CERT" --key "$TLS_KEY"
else
  echo "note: TLS_CERT/TLS_KEY not set: create pi-edge-tls yourself (the edge needs it)" >&2
fi
if [[ $mode == create ]]; then
  echo "created pi-secrets in namespace $NAMESPACE; the admin token is in its PI_ADMIN_TOKEN key" >&2
fi
