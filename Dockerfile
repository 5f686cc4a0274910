# One image, two roles:
#   web:    docker run ... mergehub                      (gunicorn; static files served by whitenoise)
#   worker: docker run ... -e MERGEHUB_QUEUE=cpu mergehub python manage.py worker
# See docs/deploy.md and compose.yaml for PostgreSQL + Redis and CPU/GPU workers.
# TORCH_INDEX picks the torch build: the CPU wheels by default; a CUDA index for GPU workers,
# e.g. --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=mergehub.settings \
    MERGEHUB_DATA_DIR=/data \
    STATIC_ROOT=/app/staticfiles

WORKDIR /app

# torch first, from the CPU wheel index unless told otherwise (the default PyPI wheel pulls in
# CUDA, several GB).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0

COPY pyproject.toml setup.py constraints.txt README.md ./
COPY mergehub ./mergehub
COPY jobs ./jobs
COPY templates ./templates
COPY static ./static
COPY manage.py ./
# gcc only to build the engine's compiled kernels (setup.py); removed again in the same layer
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install -c constraints.txt -e '.[web]' \
    && test -n "$(find mergehub/engine/kernels -name '_kernels*.so')" \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --create-home --uid 1000 mergehub \
    && mkdir -p /data \
    && chown mergehub:mergehub /data

USER mergehub
VOLUME ["/data"]
EXPOSE 8000

# Exec form: gunicorn is PID 1 and receives SIGTERM from `docker stop` directly.
CMD ["gunicorn", "mergehub.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "120", "--access-logfile", "-"]
