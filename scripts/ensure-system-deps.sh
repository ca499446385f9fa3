#!/usr/bin/env bash
# Installs the system packages Dalaba needs when they are missing (Debian/Ubuntu).
# Real parts, not mocks: the broker, the audio tools, the offline voice, and the
# browser with CJK fonts for the console tests.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || need+=(mosquitto)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
if [ "${DALABA_SKIP_BROWSER:-0}" != "1" ]; then
  [ -x /usr/bin/chromium ] || need+=(chromium)
  fc-list 2>/dev/null | grep -qi "Noto Sans CJK" || need+=(fonts-noto-cjk)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

# Deduplicate.
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "installing system packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
