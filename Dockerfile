# Sweetspot, CPU-only. One image, two roles: `serve` (the API) or `worker` (runs jobs).
# torch is the CPU build from PyTorch's CPU index, so the image never pulls CUDA packages.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY perfmodel perfmodel
COPY model model
COPY service service
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir . \
    && python -m model.sparse
ENV SWEETSPOT_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
ENTRYPOINT ["sweetspot"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
