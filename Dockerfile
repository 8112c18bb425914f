# golb container image: non-root, configuration in /etc/golb/golb.yaml.
#   docker build -t golb .
#   docker run --rm -p 8080:8080 golb                       # demo backends
#   docker run --rm -p 8080:8080 -v $PWD/my.yaml:/etc/golb/golb.yaml:ro golb
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY setup.py pyproject.toml README.md ./
COPY golb ./golb
COPY twisted ./twisted
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
COPY --from=build /install /usr/local
# Regenerate Twisted's plugin cache as root (the runtime user cannot write
# it), then create the user golb runs as and its state directory (Manhole
# host key).
RUN python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && useradd --system --uid 10001 --home-dir /var/lib/golb --shell /usr/sbin/nologin golb \
    && mkdir -p /etc/golb /var/lib/golb \
    && chown golb /var/lib/golb
COPY config/golb.yaml /etc/golb/golb.yaml
USER 10001
ENV GOLB_STATE_DIR=/var/lib/golb PYTHONUNBUFFERED=1
EXPOSE 8080 8081 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "-n", "--pidfile=", "-l", "-", "golb"]
CMD ["--config", "/etc/golb/golb.yaml"]
