#!/bin/sh
# The Debian packages the test suite drives for real: Chromium (browser tests), Mosquitto with its
# dynamic-security plugin and clients, PostgreSQL, Redis, and Node.js with npm (MQTT.js). Installs only
# what is missing (which needs root); on a machine that has them all it does nothing.
set -eu
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
command -v mosquitto_pub >/dev/null 2>&1 || missing="$missing mosquitto-clients"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
