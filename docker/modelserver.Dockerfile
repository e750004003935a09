# syntax=docker/dockerfile:1
# A model server. CUDA by default; the CPU variant swaps the base and the torch index:
#   docker build -f docker/modelserver.Dockerfile -t ghcr.io/gama-serving/modelserver:0.1.0-cuda .
#   docker build -f docker/modelserver.Dockerfile -t ghcr.io/gama-serving/modelserver:0.1.0-cpu \
#     --build-arg RUNTIME_IMAGE=debian:bookworm-slim \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
ARG RUNTIME_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.5.11

FROM ${UV_IMAGE} AS uv

# Python 3.11 comes from uv's standalone builds, so the same interpreter runs on the CUDA
# (Ubuntu) and the CPU (Debian) base alike.
FROM ${RUNTIME_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy UV_NO_CACHE=1
RUN uv python install 3.11.11 && uv venv --python 3.11.11 /opt/venv
COPY pyproject.toml constraints.txt README.md /src/
COPY gamaserving /src/gamaserving
COPY modelserver /src/modelserver
COPY router /src/router
COPY demo /src/demo
RUN VIRTUAL_ENV=/opt/venv uv pip install --index-strategy unsafe-best-match \
      --extra-index-url "${TORCH_INDEX}" -c /src/constraints.txt "/src[modelserver]"

FROM ${RUNTIME_IMAGE}
RUN groupadd --gid 10001 gama && useradd --uid 10001 --gid 10001 --no-create-home gama
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
USER 10001:10001
EXPOSE 50061 8081 9464
ENTRYPOINT ["modelserver"]
CMD ["serve", "--model-dir", "/models/model"]
