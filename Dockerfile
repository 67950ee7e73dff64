# The whole hub in one process: MQTT on 1883; HTTP on 8000 (dashboard, admin, API, live views, MQTT over
# WebSocket at /mqtt). The database, secret key and generated migrations live on the /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HUBSERVER_DATA_DIR=/data

# Only what the package is built from: a clone also holds what its user made there (device.py, the
# provisioned plugs.csv with device passwords, a venv), and a copied file stays in the image's layers even
# after it is removed.
COPY pyproject.toml README.md /src/
COPY hubserver /src/hubserver
COPY plugins /src/plugins
COPY devicetypes /src/devicetypes
COPY settings /src/settings
RUN pip install --no-cache-dir /src && rm -rf /src

# Never root: a user of its own, owning only the data volume (and a home for the running-hub note that
# lets `docker exec ... hubserver provision` print the hub's ports).
RUN useradd --system --create-home --uid 10001 --shell /usr/sbin/nologin hubserver \
    && mkdir -p /data && chown hubserver:hubserver /data
USER hubserver
WORKDIR /data
VOLUME /data
EXPOSE 1883 8000

# Healthy while /healthz answers (HTTP and the database) and MQTT accepts connections.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "hubserver.healthcheck"]

CMD ["hubserver", "run"]
