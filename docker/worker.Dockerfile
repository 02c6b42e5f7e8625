# The image of the example stack (docker/compose.yaml): aqueue with its extras and the example
# app. The same image runs the worker (the default command) and the FastAPI app.
#
#   docker build -f docker/worker.Dockerfile -t aqueue-example .     (from the repository root)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# aqueue (this checkout: the aqueue-rabbitmq distribution) with the OpenTelemetry SDK +
# OTLP/HTTP exporter (--otel), the Prometheus endpoint (--metrics-port), Redis results and the example's FastAPI/uvicorn; plus OpenTelemetry's
# zero-code instrumentation, which gives the web app an SDK (`opentelemetry-instrument`).
COPY pyproject.toml README.md ./
COPY aqueue ./aqueue
RUN pip install ".[otel,metrics,redis,examples]" opentelemetry-distro opentelemetry-instrumentation-fastapi

COPY examples ./examples

RUN useradd --create-home --uid 10001 aqueue
USER aqueue

# 9100: the worker's Prometheus metrics; 8000: the web app
EXPOSE 9100 8000

CMD ["aqueue", "worker", "examples.tasks:queue", "--otel", "--metrics-port", "9100"]
