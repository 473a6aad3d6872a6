# syntax=docker/dockerfile:1
# The vgpu-dra image: one program, `vgpu-dra`, run as `vgpu-dra controller` (Deployment) or
# `vgpu-dra kubelet-plugin` (DaemonSet), carrying libvgpu.so for the plugin to install on nodes.
#
#   docker build -t ghcr.io/vgpu-dra/vgpu-dra:0.1.0 .
#
# Stages: shim (compiles libvgpu.so and proves it needs no glibc newer than 2.17), python (a
# virtual environment with the package), runtime (slim Python, no compiler).

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
# libvgpu.so is loaded into every process of every GPU container through /etc/ld.so.preload, so
# it must load on the oldest glibc a CUDA image may carry (2.17, CentOS 7 era). The sources pin
# each libc/libdl/libpthread symbol to its oldest version (shim/src/glibc_compat.h), so a current
# toolchain builds it; the check below fails the build if any symbol still needs a newer glibc.
FROM debian:${DEBIAN_RELEASE}-slim AS shim
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY shim/ shim/
RUN make -C shim out/libvgpu.so
# glibc-2.17-check: the newest GLIBC_x.y version any imported symbol asks for must be <= 2.17.
RUN newest="$(objdump -T shim/out/libvgpu.so | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -n 1)" \
 && echo "libvgpu.so needs glibc ${newest:-(none)}" \
 && if [ -n "$newest" ] && [ "$(printf '%s\n2.17\n' "$newest" | sort -V | tail -n 1)" != "2.17" ]; then \
      echo "libvgpu.so needs glibc $newest, newer than 2.17: pin the symbol in shim/src/glibc_compat.h" >&2; exit 1; \
    fi

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS python
ARG PYTHON_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/* \
 && pip install --no-cache-dir "grpcio-tools>=1.60"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api/ api/
COPY driver/ driver/
COPY controller/ controller/
COPY kubeletplugin/ kubeletplugin/
COPY cli/ cli/
COPY webhook/ webhook/
# driver/vgpu_region.h is a symlink to the shim's header: the wheel carries the region layout
# that driver/region.py reads.
COPY shim/include/ shim/include/
# The gRPC stubs are generated, not committed; the same makefile as a checkout's `make protos`.
RUN make -f kubeletplugin/protos.mk PY=python \
 && python -m venv /opt/vgpu-dra \
 && /opt/vgpu-dra/bin/pip install --no-cache-dir . \
 && /opt/vgpu-dra/bin/vgpu-dra --help >/dev/null
RUN /opt/vgpu-dra/bin/python -c "import vgpu_dra.driver.region"

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime
COPY --from=python /opt/vgpu-dra /opt/vgpu-dra
# The kubelet plugin's default --shim; the chart's init container installs it on each node under
# /var/lib/vgpu-dra/shim/<version>-<hash>/, a new directory per build, never overwritten.
COPY --from=shim /src/shim/out/libvgpu.so /usr/local/lib/vgpu-dra/libvgpu.so
ENV PATH=/opt/vgpu-dra/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root by default (the controller); the chart runs the kubelet plugin as root.
USER 65532:65532
ENTRYPOINT ["vgpu-dra"]
CMD ["--help"]
