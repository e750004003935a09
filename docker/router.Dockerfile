# syntax=docker/dockerfile:1
# The router: no torch, no ONNX Runtime. Build from the repository root:
#   docker build -f docker/router.Dockerfile -t ghcr.io/gama-serving/router:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md /src/
COPY gamaserving /src/gamaserving
COPY router /src/router
COPY modelserver /src/modelserver
COPY demo /src/demo
RUN /opt/venv/bin/pip install -c /src/constraints.txt "/src[router]"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 gama && useradd --uid 10001 --gid 10001 --no-create-home gama
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 10001:10001
EXPOSE 50051 8081 9464
ENTRYPOINT ["router"]
CMD ["serve", "--config", "/etc/gama-serving/router.yaml"]
