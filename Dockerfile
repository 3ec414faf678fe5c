# syntax=docker/dockerfile:1
# segcontainer: the SageMaker training and inference image (`docker run IMAGE train|serve`).
#
# BASE_IMAGE brings Python (3.10+), pip, torch and torchvision; this file keeps the base's torch
# and adds nginx, the package and its other dependencies. The default, PyTorch's official
# CUDA 12.6 runtime image, has kernels for compute capability 5.0, 6.0, 7.0, 7.5, 8.0, 8.6 and
# 9.0, so one image runs on ml.p3 (V100, 7.0), ml.g4dn (T4, 7.5), ml.p4d/p4de (A100, 8.0),
# ml.g5 (A10G, 8.6), ml.g6/g6e (L4/L40S, 8.9: runs the 8.6 kernels) and ml.p5/p5e/p5en
# (H100/H200, 9.0). For ml.p6 (B200, 10.0) build on a CUDA 13 base instead, which has no
# Volta kernels:  --build-arg BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
# DOWNLOAD_WEIGHTS=false skips the ImageNet weights (offline builds); such an image
# trains with use_pretrained_model=False only.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG DOWNLOAD_WEIGHTS=true

LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true

# TORCH_HOME: torchvision's weights cache, outside /opt/ml (SageMaker mounts over /opt/ml).
ENV PYTHONUNBUFFERED=TRUE \
    PYTHONDONTWRITEBYTECODE=TRUE \
    TORCH_HOME=/opt/torch \
    PATH="/opt/program:${PATH}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# nginx fronts gunicorn in `serve`. Not pinned: the version is whatever the base's distribution
# ships (Debian or Ubuntu, any release), and its security updates are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# The package, with the base's torch and torchvision held at their installed versions by a
# constraint so pip never replaces them with another (CPU or other CUDA) build. COPY, not a
# bind mount: a RUN with a bind mount is cached by podman/buildah whatever the mounted files
# hold, so a rebuild after a code change kept the old code; COPY's cache key is the files.
# PIP_BREAK_SYSTEM_PACKAGES: the base's python3 may be a distribution's (PEP 668).
COPY pyproject.toml README.md /tmp/build/
COPY src /tmp/build/src
COPY train serve /opt/program/
RUN python3 -c 'from importlib.metadata import version as v; print(*(f"{p}=={v(p)}" for p in ("torch", "torchvision")), sep="\n")' > /tmp/base-torch.txt \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --no-compile \
        -c /tmp/base-torch.txt /tmp/build \
    && python3 -m pip list --format=freeze | grep -E '^(torch|torchvision)==' | diff - /tmp/base-torch.txt \
    && rm -rf /tmp/build /tmp/base-torch.txt \
    && chmod 0755 /opt/program/train /opt/program/serve

# ImageNet weights into the cache that use_pretrained_model reads (there is no network at
# training time): the segmentation encoders' (ResNet-50, ResNet-101) and image classification's
# (num_layers 18, 34, 50, 101, 152: tasks/classification/model.IMAGENET; 50 and 101 are the
# same files as the encoders'). Each is checked present where the trainer looks for it.
RUN if [ "${DOWNLOAD_WEIGHTS}" = "true" ]; then \
        python3 -c "from segcontainer.tasks.classification.model import IMAGENET; [w.get_state_dict(progress=False) for _, w in IMAGENET.values()]" \
        && python3 -c "from segcontainer.models import pretrained_weights_file as f; assert all(f(b).is_file() for b in ('resnet-50', 'resnet-101'))" \
        && python3 -c "from segcontainer.models.weights import weights_file as f; from segcontainer.tasks.classification.model import IMAGENET; assert all(f(w).is_file() for _, w in IMAGENET.values())" \
        && rm -rf /tmp/torchinductor_*; \
    fi

# backbone=mobilenet-v3-large's ImageNet weights and pretrained_weights=coco-voc's whole-model
# weights (torchvision's COCO_WITH_VOC_LABELS_V1 for each pair models.COCO_VOC lists), about 810 MB.
RUN if [ "${DOWNLOAD_WEIGHTS}" = "true" ]; then \
        python3 -c "from torchvision.models import MobileNet_V3_Large_Weights as M; from segcontainer.models import COCO_VOC; [w.get_state_dict(progress=False) for w in (M.IMAGENET1K_V1, *COCO_VOC.values())]" \
        && python3 -c "from segcontainer.models import COCO_VOC, pretrained_weights_file as f; from segcontainer.models.weights import weights_file as w; assert f('mobilenet-v3-large').is_file() and all(w(x).is_file() for x in COCO_VOC.values())" \
        && rm -rf /tmp/torchinductor_*; \
    fi

WORKDIR /opt/program
EXPOSE 8080

# No ENTRYPOINT: SageMaker runs `docker run IMAGE train|serve`, the word is found on PATH and
# runs as PID 1, so SIGTERM reaches it. An entrypoint inherited from the base is cleared.
ENTRYPOINT []
