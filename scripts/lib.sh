# Shared by the install scripts (sourced, not run): Debian packages and the Python to use.

# need_debian_packages WHO [--no-recommends] PKG...: install those of PKG... that are missing (as
# root; otherwise say which are missing and fail). WHO names the caller in messages. Waits for
# another apt run's lock.
need_debian_packages() {
  local who="$1"; shift
  local opts=()
  if [ "${1:-}" = "--no-recommends" ]; then opts=(--no-install-recommends); shift; fi
  local missing=() pkg
  for pkg in "$@"; do
    # no pipe into grep -q: under pipefail an early exit of grep is a SIGPIPE for dpkg-query
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" == *"install ok installed"* ]] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "$who: missing Debian packages: ${missing[*]}; run as root, or install them first" >&2
    return 1
  fi
  echo "$who: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${opts[@]}" "${missing[@]}" >/dev/null
}

# find_python MINOR: prints the newest python3 on PATH (pyenv's or Debian's) that is at least
# 3.MINOR and has venv; fails if there is none.
find_python() {
  local candidate
  for candidate in python3 python3.13 python3.12 python3.11 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c "import sys, venv; sys.exit(sys.version_info < (3, $1))" 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}
