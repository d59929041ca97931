# Gateway image: the tritonstack package without torch (the gateway never imports export/).
# Unchecked on the CPU-only development machine (no Docker engine there).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy deploy
COPY export export
COPY gateway gateway
COPY jobs jobs
COPY loadtest loadtest
RUN pip wheel --no-deps -w /wheels . && \
    pip wheel -w /wheels "numpy<2" fastapi "uvicorn[standard]" orjson httpx "redis>=5,<6" arq limits \
        prometheus-client pydantic-settings typer rich pyyaml "tritonclient[grpc,http]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
USER app
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
CMD ["python", "-m", "uvicorn", "--factory", "gateway.app:app_from_env", "--host", "0.0.0.0", "--port", "8080", "--loop", "uvloop", "--http", "httptools"]
