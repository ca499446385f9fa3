#!/usr/bin/env bash
# Installs the system packages Dalaba needs when they are missing (Debian, Ubuntu).
#
#   scripts/ensure-system-deps.sh demo   what `make demo` needs: Python with venv, the
#                                        broker (mosquitto), ffmpeg, the offline voice
#                                        (espeak-ng)
#   scripts/ensure-system-deps.sh test   the same, plus what only the tests need: ALSA's
#                                        aplay (alsa-utils), Erlang (the EMQX config
#                                        checks), and for the console's browser
#                                        tests Chromium and CJK fonts (~380 MB)
#
# Supported: Debian 12 and 13, Ubuntu 22.04 and 24.04 (the CI and the benchmarks run on
# Debian 12). PYTHON names the interpreter the venv is made with (default python3).
# DALABA_SKIP_BROWSER=1 leaves the browser and fonts out of `test`.
# Where something cannot be installed, it says what to do and exits 1.
# (tests/unit/test_install_scripts.py runs it against a fake system: DALABA_SYSROOT
# prefixes the absolute paths it looks at.)
set -euo pipefail

what="${1:-demo}"
case "$what" in
  demo | test) ;;
  *)
    echo "usage: $0 demo|test" >&2
    exit 2
    ;;
esac
PY="${PYTHON:-python3}"
root="${DALABA_SYSROOT:-}"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$root/usr/sbin/$1" ]; }
say() { echo "ensure-system-deps: $*" >&2; }

os_id="unknown"
os_version=""
if [ -r "$root/etc/os-release" ]; then
  # shellcheck disable=SC1091
  os_id="$(. "$root/etc/os-release" && echo "${ID:-unknown}")"
  os_version="$(. "$root/etc/os-release" && echo "${VERSION_ID:-}")"
fi

need=()
problems=()

# Python 3.11 or newer, with venv: Debian and Ubuntu split ensurepip into pythonX.Y-venv,
# without which `python3 -m venv` fails.
if ! have "$PY"; then
  need+=(python3 python3-venv)
elif ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  found="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "?")"
  problems+=("Python 3.11 or newer is needed; $PY is $found. On Ubuntu 22.04: sudo apt-get install python3.11 python3.11-venv, then: make $what PYTHON=python3.11")
elif ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$PY" = python3 ]; then
    need+=(python3-venv)
  else
    need+=("$(basename "$PY")-venv")
  fi
fi

have mosquitto || need+=(mosquitto)
have mosquitto_passwd || need+=(mosquitto)
have ffmpeg || need+=(ffmpeg)
have espeak-ng || need+=(espeak-ng)
# The `linux` board driver's tests play through the real aplay into ALSA file PCMs.
if [ "$what" = test ]; then
  have aplay || need+=(alsa-utils)
  # The EMQX cluster files are checked the way EMQX reads them: Erlang's file:consult
  # for acl.conf and its crypto for the imported password hashes (test_broker_cluster).
  have escript || need+=(erlang-base)
  compgen -G "$root/usr/lib/erlang/lib/crypto-*" >/dev/null || need+=(erlang-crypto)
fi

if [ "$what" = test ] && [ "${DALABA_SKIP_BROWSER:-0}" != "1" ]; then
  # The browser tests drive /usr/bin/chromium (tests/browser/conftest.py). Debian packages
  # it there; Ubuntu has only a snap, which does not install it at that path.
  if [ ! -x "$root/usr/bin/chromium" ]; then
    case "$os_id" in
      ubuntu)
        problems+=("Ubuntu $os_version ships Chromium only as a snap, not as /usr/bin/chromium, which the browser tests drive. Run everything else with: make test DALABA_SKIP_BROWSER=1 (the browser tests then skip, saying why), or run the whole suite on Debian 12 or 13")
        ;;
      *) need+=(chromium) ;;
    esac
  fi
  # Output captured first: with pipefail, `fc-list | grep -q` fails at random when grep
  # exits on the first match and fc-list dies of SIGPIPE.
  fonts=$(fc-list 2>/dev/null || true)
  [[ "$fonts" == *"Noto Sans CJK"* ]] || need+=(fonts-noto-cjk)
fi

if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  if ! have apt-get; then
    problems+=("no apt-get here: install these packages (or their equivalents) with the system's package manager: ${need[*]}")
    need=()
  fi
fi

if [ ${#need[@]} -gt 0 ]; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if have sudo; then
      SUDO=(sudo)
    else
      say "not root and no sudo: as root, run: apt-get install --no-install-recommends ${need[*]}"
      exit 1
    fi
  fi
  say "installing system packages for '$what': ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  # A package this release does not have is reported by name instead of failing the
  # whole apt-get run.
  available=()
  for pkg in "${need[@]}"; do
    policy=$(apt-cache policy "$pkg" 2>/dev/null || true)  # not piped: see fc-list above
    if [[ "$policy" =~ Candidate:\ [^\(] ]]; then
      available+=("$pkg")
    else
      problems+=("apt has no package '$pkg' on ${os_id} ${os_version}: install it another way (supported: Debian 12, 13; Ubuntu 22.04, 24.04)")
    fi
  done
  if [ ${#available[@]} -gt 0 ]; then
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${available[@]}"
  fi
fi

if [ ${#problems[@]} -gt 0 ]; then
  for p in "${problems[@]}"; do
    say "$p"
  done
  exit 1
fi
