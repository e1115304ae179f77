# shellcheck shell=bash
# Functions shared by the configure.d scripts that build the Slurm cluster.
# Sourced (". lib/node.sh"), never run on its own: the bootstrap runs only
# the *.sh files at the top of configure.d.
#
# After sourcing: $me (the calling script's name), $conf_dir (the merged
# configure.d folder), the variables of /etc/flightdeck/cluster.env, and the
# functions log, die, setting, imds and need_packages.

me=${0##*/}
log() { echo "$me: $*"; }
die() {
  log "$*"
  exit 1
}

if [ -z "${FLIGHTDECK_ROLE:-}" ] && [ -r /etc/flightdeck/cluster.env ]; then
  set -a
  # shellcheck source=/dev/null
  . /etc/flightdeck/cluster.env
  set +a
fi
conf_dir=${FLIGHTDECK_CONFIGURE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export AWS_DEFAULT_REGION=${FLIGHTDECK_REGION:-}
# IMDS may be slow to answer for a moment: ask it for credentials more than once.
export AWS_METADATA_SERVICE_NUM_ATTEMPTS=3 AWS_METADATA_SERVICE_TIMEOUT=2

# setting NAME DEFAULT: the last NAME=value line of settings.env, unquoted.
setting() {
  local value=""
  if [ -r "$conf_dir/settings.env" ]; then
    value=$(sed -n "s/^[[:space:]]*$1=//p" "$conf_dir/settings.env" | tail -n 1)
    value=${value%\"}; value=${value#\"}; value=${value%\'}; value=${value#\'}
  fi
  printf '%s' "${value:-$2}"
}

# imds PATH: a value from the instance metadata service (IMDSv2).
imds() {
  local token
  token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
    http://169.254.169.254/latest/api/token) || return 1
  curl -sf -H "X-aws-ec2-metadata-token: $token" \
    "http://169.254.169.254/latest/meta-data/$1"
}

# need_packages NAME...: installs the Debian packages that are not installed
# yet (an image that already has them, like a site's own, boots faster).
need_packages() {
  local missing=() name attempt=1
  for name in "$@"; do
    dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$name")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  until apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; do
    [ "$attempt" -ge 3 ] && die "could not install ${missing[*]}"
    log "apt-get failed (attempt $attempt), retrying"
    sleep $((attempt * 10))
    attempt=$((attempt + 1))
  done
}
