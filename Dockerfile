# Sweetspot on a CPU-only image. torch is pinned to the CPU build from PyTorch's CPU index so
# the image never pulls CUDA packages.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY perfmodel perfmodel
COPY model model
COPY service service
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir .
ENTRYPOINT ["sweetspot"]
CMD ["--help"]
