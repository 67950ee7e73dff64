# The hub on its embedded defaults: MQTT on 1883, HTTP (admin, API, live views, MQTT over WebSocket) on 8000.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HUBSERVER_DATA_DIR=/data

COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src

# Run outside the source tree, on the volume that holds the database, secret key and generated migrations.
WORKDIR /data
VOLUME /data
EXPOSE 1883 8000

CMD ["hubserver", "run"]
