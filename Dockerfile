# syntax=docker/dockerfile:1
# Kubeloop: one image for the operator and its runtimes (kubeloop operator|train|serve|drift).
#
#   docker build -t kubeloop:dev .
#   docker build --build-arg BASE=python:3.12-slim -t kubeloop:dev .
#
# Two stages: the build stage installs the package with its train and serve extras into a
# virtualenv; the runtime stage copies only that virtualenv onto a fresh base, so no compiler,
# pip cache or source tree ships. The base image is an argument so a mirror or a hardened base
# can be used; both stages use the same one (the virtualenv links to its python).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/kubeloop
# Metadata first: the dependency layer is rebuilt only when pyproject.toml or the lock changes.
# Every package is pinned by requirements.lock (hack/image/lock writes it): what ships is what
# was tested.
COPY pyproject.toml README.md requirements.lock ./
COPY operator ./operator
# Bytecode is compiled here, once, and ships: the runtime sets PYTHONDONTWRITEBYTECODE (its
# filesystem may be read-only), so without it every pod compiles every module it imports.
# Measured in this image, importing what a trainer and a server need: 2.8-3.1 CPU-s with,
# 7.3-7.7 without (`python -X pycache_prefix=<empty dir>`). unchecked-hash: an image never
# changes, so Python need not compare source timestamps, which copying stages may not keep.
RUN /opt/kubeloop/bin/pip install --constraint requirements.lock ".[train,serve,boost,mlflow]" \
    && find /opt/kubeloop -name 'tests' -type d -path '*site-packages/*/tests' -prune -exec rm -rf {} + \
    && find /opt/kubeloop -name '__pycache__' -type d -prune -exec rm -rf {} + \
    && /opt/kubeloop/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/kubeloop/lib

FROM ${BASE} AS runtime
ARG BASE
LABEL org.opencontainers.image.title="kubeloop" \
      org.opencontainers.image.description="Kubeloop operator and runtimes: train, serve, drift" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"
# uid/gid 10001: the user the chart and every runtime pod run as
# (operator/kubeloop/resources/trainingjob.py RUNTIME_UID), so files on shared volumes agree.
# LightGBM's wheel links the system OpenMP runtime, libgomp.so.1 (xgboost-cpu vendors its
# own). python:3.11-slim lacks it and gets it from apt; the real node's debootstrap base
# (hack/realnode/versions.env BASE_PACKAGES) has it already, so that build needs no apt.
RUN if ! ldconfig -p | grep -q 'libgomp\.so\.1 '; then \
      apt-get update \
      && apt-get install -y --no-install-recommends libgomp1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN groupadd --system --gid 10001 kubeloop \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin kubeloop
COPY --from=build /opt/kubeloop /opt/kubeloop
# Fails the build, not a pod, when a booster library cannot load its native parts.
RUN /opt/kubeloop/bin/python -c "import lightgbm, xgboost"
ENV PATH=/opt/kubeloop/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Numeric, so Kubernetes can verify runAsNonRoot without a passwd lookup.
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["kubeloop"]
CMD ["--help"]
