#!/bin/bash
# Create (or reuse) the cluster owner's login account and install their SSH
# public keys from the file "authorized_keys" in this configure.d folder (the
# per-user customizer folder provides it).
#
# Environment (set by the node bootstrap, else read from
# /etc/flightdeck/cluster.env): FLIGHTDECK_USER, FLIGHTDECK_ROLE,
# FLIGHTDECK_CONFIGURE_DIR.
# Optional settings (settings.env in this folder): ACCESS_USER_UID,
# ACCESS_USER_SHELL, ACCESS_USER_SUDO.
#
# Idempotent: an existing account is kept; the keys live in a marked block of
# ~/.ssh/authorized_keys that is replaced on every run, so keys the user
# added outside the block stay.
set -euo pipefail

# shellcheck source=customizer/default/configure.d/lib/node.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/node.sh"
role=${FLIGHTDECK_ROLE:-unknown}
user=${FLIGHTDECK_USER:-}

if [ -z "$user" ]; then
  log "FLIGHTDECK_USER is not set; nothing to do"
  exit 1
fi
if ! [[ $user =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$ ]]; then
  log "refusing user name '$user': not a valid login name"
  exit 1
fi

uid=$(setting ACCESS_USER_UID "")
shell=$(setting ACCESS_USER_SHELL /bin/bash)
sudo=$(setting ACCESS_USER_SUDO yes)

if id -u "$user" >/dev/null 2>&1; then
  log "account $user exists (uid $(id -u "$user"))"
else
  args=(--create-home --shell "$shell" --comment "flightdeck cluster owner")
  if [ -n "$uid" ]; then
    if ! [[ $uid =~ ^[0-9]+$ ]]; then
      log "ACCESS_USER_UID '$uid' is not a number"
      exit 1
    fi
    args+=(--uid "$uid")
  fi
  useradd "${args[@]}" "$user"
  log "created account $user (uid $(id -u "$user"))"
fi

home=$(getent passwd "$user" | cut -d: -f6)
group=$(id -gn "$user")

sudoers=/etc/sudoers.d/90-flightdeck-user
if [ "$sudo" = yes ] && ! command -v visudo >/dev/null 2>&1; then
  log "sudo is not installed on this node; $user gets no sudo rights"
elif [ "$sudo" = yes ]; then
  tmp=$(mktemp)
  printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$user" > "$tmp"
  if visudo -cqf "$tmp"; then
    install -m 0440 -o root -g root "$tmp" "$sudoers"
    log "$user may use sudo"
  else
    log "could not validate the sudoers entry for $user"
    rm -f "$tmp"
    exit 1
  fi
  rm -f "$tmp"
elif [ -e "$sudoers" ]; then
  rm -f "$sudoers"
  log "sudo for $user removed (ACCESS_USER_SUDO=$sudo)"
fi

keys_src="$conf_dir/authorized_keys"
if [ ! -s "$keys_src" ]; then
  if [ "$role" = master ]; then
    log "no authorized_keys in $conf_dir: $user cannot log in; add it to the user's customizer folder"
    exit 1
  fi
  log "no authorized_keys in $conf_dir; leaving $user's keys as they are"
  exit 0
fi

# Keep only lines that look like public keys; report the rest.
keys=$(mktemp)
trap 'rm -f "$keys"' EXIT
count=0
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%$'\r'}
  case "$line" in
    '' | '#'*) continue ;;
  esac
  if printf '%s\n' "$line" | ssh-keygen -l -f /dev/stdin >/dev/null 2>&1; then
    printf '%s\n' "$line" >> "$keys"
    count=$((count + 1))
  else
    log "skipping a line of authorized_keys that is not a public key: ${line:0:40}..."
  fi
done < "$keys_src"
if [ "$count" -eq 0 ]; then
  log "authorized_keys holds no valid public key"
  exit 1
fi

ssh_dir="$home/.ssh"
target="$ssh_dir/authorized_keys"
begin="# BEGIN flightdeck managed keys"
end="# END flightdeck managed keys"
install -d -m 0700 -o "$user" -g "$group" "$ssh_dir"
new=$(mktemp)
trap 'rm -f "$keys" "$new"' EXIT
if [ -f "$target" ]; then
  # Everything outside the managed block is kept as it is.
  sed "/^$begin\$/,/^$end\$/d" "$target" > "$new"
fi
{
  echo "$begin"
  cat "$keys"
  echo "$end"
} >> "$new"
if [ -f "$target" ] && cmp -s "$new" "$target"; then
  log "$count key(s) for $user already installed"
else
  install -m 0600 -o "$user" -g "$group" "$new" "$target"
  log "installed $count key(s) for $user in $target"
fi
# Keep ownership and mode right even when nothing changed.
chown "$user:$group" "$ssh_dir" "$target"
chmod 0700 "$ssh_dir"
chmod 0600 "$target"
if command -v restorecon >/dev/null 2>&1; then
  restorecon -R "$ssh_dir" || true
fi
