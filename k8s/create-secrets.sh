#!/usr/bin/env bash
# Creates the Secrets the manifests read (never committed, never generated from the repo).
# Each process gets only its own:
#
#   pi-auth          DATABASE_URL (as the role pi_auth), PI_DB_SERVICE_ROLE_PASSWORD,
#                    PI_MASTER_KEYS (auth's own), PI_ADMIN_TOKEN, REDIS_URL (optional)
#   pi-transactions  DATABASE_URL (as pi_transactions), PI_DB_SERVICE_ROLE_PASSWORD,
#                    PI_MASTER_KEYS (its own), REDIS_URL (optional)
#   pi-payments      DATABASE_URL (as pi_payments), PI_DB_SERVICE_ROLE_PASSWORD,
#                    PI_MASTER_KEYS (its own), PI_CARD_FINGERPRINT_KEY, REDIS_URL (optional)
#   pi-migrations    DATABASE_URL: the owner's, for the migration Jobs only (they create the
#                    schemas and the three roles, each granted its own schema)
#   pi-edge-tls      the edge's public TLS certificate and key (type kubernetes.io/tls)
#   pi-<name>-tls    with MESH_CERTS_DIR: the mesh identities of auth, transactions,
#   pi-edge-mesh-tls payments, the edge and the operator (pi-admin-tls), kubernetes.io/tls
#   pi-admin-tls     with ca.crt, as cert-manager makes them (overlays/prod issues them with
#                    cert-manager instead: k8s/overlays/prod/mesh-certificates.yaml)
#
# Usage:
#   DATABASE_URL=postgresql://pi:PASSWORD@postgres.example:5432/pi \
#   REDIS_URL=redis://redis.example:6379/0 \
#   TLS_CERT=edge.crt TLS_KEY=edge.key \
#   MESH_CERTS_DIR=var/k8s-certs \    # from `python -m pi.edge mesh-certs --dir var/k8s-certs`
#   k8s/create-secrets.sh            # create them in the cluster (kubectl's current context)
#   k8s/create-secrets.sh --print    # print them as YAML instead (for sops, sealed-secrets...)
#
# PI_ADMIN_TOKEN, the master keys (one per service) and the roles' passwords are generated
# at random. The script only creates: it fails if a Secret already exists, because new
# master keys would make the data encrypted with the old ones unreadable. To rotate a
# service's master key, add a version (1=<old>,2=<new>) to its Secret deliberately.
set -euo pipefail

NAMESPACE="${NAMESPACE:-pi}"
SERVICES=(auth transactions payments)
mode=create
case "${1:-}" in
  --print) mode=print ;;
  "") ;;
  *) echo "usage: $0 [--print]" >&2; exit 2 ;;
esac

: "${DATABASE_URL:?DATABASE_URL is required (postgresql://owner:password@host:5432/db)}"
if [[ ! "$DATABASE_URL" =~ ^([a-z+]+)://([^@/]*@)?(.*)$ ]]; then
  echo "DATABASE_URL must be a postgresql:// URL" >&2
  exit 2
fi
url_scheme="${BASH_REMATCH[1]}"
url_location="${BASH_REMATCH[3]}"
random_token() { head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }
master_key() { printf '1=%s' "$(head -c 32 /dev/urandom | base64 | tr -d '\n')"; }
PI_ADMIN_TOKEN="${PI_ADMIN_TOKEN:-adm_$(random_token)}"

# Values go through files, not the command line, so they never show in `ps`.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
umask 077

secret() {
  if [[ $mode == print ]]; then
    kubectl create --dry-run=client -o yaml --namespace "$NAMESPACE" secret "$@"
    echo "---"
  else
    kubectl create --namespace "$NAMESPACE" secret "$@"
  fi
}

# from_files NAME KEY... : a generic Secret from $tmp/NAME/KEY files.
from_files() {
  local name="$1"
  shift
  local args=()
  for key in "$@"; do args+=("--from-file=$key=$tmp/$name/$key"); done
  secret generic "$name" "${args[@]}"
}

mkdir "$tmp/pi-migrations"
printf '%s' "$DATABASE_URL" >"$tmp/pi-migrations/DATABASE_URL"
from_files pi-migrations DATABASE_URL

for service in "${SERVICES[@]}"; do
  dir="$tmp/pi-$service"
  mkdir "$dir"
  password="$(random_token)"
  keys=(DATABASE_URL PI_DB_SERVICE_ROLE_PASSWORD PI_MASTER_KEYS)
  printf '%s' "$url_scheme://pi_$service:$password@$url_location" >"$dir/DATABASE_URL"
  printf '%s' "$password" >"$dir/PI_DB_SERVICE_ROLE_PASSWORD"
  master_key >"$dir/PI_MASTER_KEYS"
  if [[ $service == auth ]]; then
    printf '%s' "$PI_ADMIN_TOKEN" >"$dir/PI_ADMIN_TOKEN"
    keys+=(PI_ADMIN_TOKEN)
  fi
  if [[ $service == payments ]]; then
    # Card fingerprints: a key of their own, never rotated (docs/security.md).
    head -c 32 /dev/urandom | base64 | tr -d '\n' >"$dir/PI_CARD_FINGERPRINT_KEY"
    keys+=(PI_CARD_FINGERPRINT_KEY)
  fi
  if [[ -n "${REDIS_URL:-}" ]]; then
    printf '%s' "$REDIS_URL" >"$dir/REDIS_URL"
    keys+=(REDIS_URL)
  fi
  from_files "pi-$service" "${keys[@]}"
done

if [[ -n "${TLS_CERT:-}" && -n "${TLS_KEY:-}" ]]; then
  secret tls pi-edge-tls --cert "$TLS_CERT" --key "$TLS_KEY"
else
  echo "note: TLS_CERT/TLS_KEY not set: create pi-edge-tls yourself (the edge needs it)" >&2
fi

if [[ -n "${MESH_CERTS_DIR:-}" ]]; then
  for name in auth transactions payments edge admin; do
    case $name in
      edge) secret_name=pi-edge-mesh-tls ;;
      *) secret_name="pi-$name-tls" ;;
    esac
    secret generic "$secret_name" --type=kubernetes.io/tls \
      "--from-file=tls.crt=$MESH_CERTS_DIR/mesh/$name.pem" \
      "--from-file=tls.key=$MESH_CERTS_DIR/mesh/$name-key.pem" \
      "--from-file=ca.crt=$MESH_CERTS_DIR/ca.pem"
  done
else
  echo "note: MESH_CERTS_DIR not set: the mesh identities (pi-<service>-tls, pi-edge-mesh-tls," \
    "pi-admin-tls) come from cert-manager (k8s/overlays/prod/mesh-certificates.yaml)" >&2
fi
if [[ $mode == create ]]; then
  echo "created the Secrets in namespace $NAMESPACE; the admin token is in pi-auth's PI_ADMIN_TOKEN" >&2
fi
