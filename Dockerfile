# Minimal image for now; the container-image issue completes it (CUDA base, nginx, weights).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=TRUE \
    PYTHONDONTWRITEBYTECODE=TRUE \
    TORCH_HOME=/opt/torch \
    PATH="/opt/program:${PATH}"

RUN apt-get update && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/program
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c constraints.txt .

# ImageNet encoder weights at build time: there is no network at training time.
RUN python -c "from torchvision.models import ResNet50_Weights as A, ResNet101_Weights as B; \
[w.get_state_dict(progress=False) for w in (A.IMAGENET1K_V1, B.IMAGENET1K_V1)]"

COPY train serve ./
# SageMaker runs `docker run IMAGE train|serve`: the executables are on PATH, no ENTRYPOINT.
