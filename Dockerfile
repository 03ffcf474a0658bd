# Sweetspot. One image, two roles: `serve` (the API) or `worker` (runs jobs).
# torch is the CPU build from PyTorch's CPU index, so the image never pulls CUDA packages;
# for GPU workers build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# and run with `docker run --gpus all` (docs/deploy.md, "GPUs").
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN apt-get update && apt-get install -y --no-install-recommends g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY perfmodel perfmodel
COPY model model
COPY service service
RUN pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX" \
    && pip install --no-cache-dir . \
    && python -m model.sparse
ENV SWEETSPOT_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
ENTRYPOINT ["sweetspot"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
