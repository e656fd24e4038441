#!/usr/bin/env bash
# Entry point of the nemo-stt images, with LinTO-STT-NeMo's container conventions:
#
# - The commands `serve` (the default) and `transcribe FILE...` run `nemo-stt` as USER_ID:GROUP_ID, by default
#   33:33 (www-data); any other command is run as given (`docker run -it IMAGE bash` gives a root shell).
# - The cache (Hugging Face models, NeMo's and torch's files) is /var/www/.cache, or /home/appuser/.cache when
#   USER_ID or GROUP_ID is given. HOME points at the folder above it; an XDG_CACHE_HOME or HF_HOME that the
#   user sets stands.
# - Started as a user other than root (Kubernetes' runAsUser), it cannot switch: it runs as that user.
# - SERVICE_MODE picks the ports: HTTP_PORT (http) and/or STREAMING_PORT (websocket; `http,websocket` has
#   both). A port below the kernel's unprivileged range is bound with CAP_NET_BIND_SERVICE kept for the
#   service, and no other capability.
#   In task mode, a missing SHARED_FOLDER is reported.
# - MODEL, a Hugging Face id or a mounted .nemo file, is passed on; a file the service user cannot read stops
#   the start here, with the reason.
#
# Settings are validated by nemo-stt itself; this script checks only what it must use before nemo-stt runs.
set -euo pipefail

log() { echo "entrypoint: $*" >&2; }
die() { log "$*"; exit 2; }

case "${1:-serve}" in
  serve | transcribe | -*) ;;
  *) exec "$@" ;;
esac
[[ $# -gt 0 ]] || set -- serve

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

ports=()
if [[ $1 == serve ]]; then
  # As settings.py reads it: empty means the default, case and spaces do not matter, modes are comma-separated.
  modes=$(echo "${SERVICE_MODE:-http}" | tr '[:upper:]' '[:lower:]' | tr -d '[:space:]')
  IFS=, read -ra modes <<<"$modes"
  for mode in "${modes[@]}"; do
    case "$mode" in
      http) ports+=("${HTTP_PORT:-80}") ;;
      websocket) ports+=("${STREAMING_PORT:-80}") ;;
      task)
        shared=${SHARED_FOLDER:-/opt/audio}
        [[ -d $shared ]] ||
          log "warning: SHARED_FOLDER=$shared does not exist: mount the folder that holds the tasks' audio there"
        ;;
      *) ;;  # nemo-stt names the allowed modes
    esac
  done
fi

# LinTO-STT-NeMo's rule: the cache moves to /home/appuser when an id is given, whether or not the id already has a user.
if [[ -n ${USER_ID:-} || -n ${GROUP_ID:-} ]]; then
  uid=${USER_ID:-33}
  gid=${GROUP_ID:-33}
  home=/home/appuser
else
  uid=33
  gid=33
  home=/var/www
fi
is_uint "$uid" || die "invalid USER_ID='$uid': a numeric user id is expected"
is_uint "$gid" || die "invalid GROUP_ID='$gid': a numeric group id is expected"

export HOME=$home
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-$home/.cache}
export HF_HOME=${HF_HOME:-$XDG_CACHE_HOME/huggingface}
cache=$XDG_CACHE_HOME

# A command run as the service user (the same as this shell's when it cannot switch).
as_service() {
  if [[ $(id -u) == 0 && $uid != 0 ]]; then
    setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
  else
    "$@"
  fi
}

# True when CAP_NET_BIND_SERVICE (bit 10) is in this process's bounding set (not so under --cap-drop=ALL).
can_keep_bind_cap() {
  local bounding
  bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  (( (0x$bounding >> 10) & 1 ))
}

if [[ $(id -u) == 0 ]]; then
  # Python's getpass and some libraries look the user up: an id without an entry would make them fail.
  if ! getent group "$gid" >/dev/null; then
    group_name=appgroup
    getent group "$group_name" >/dev/null && group_name=appgroup-$gid
    groupadd --gid "$gid" "$group_name"
  fi
  if ! getent passwd "$uid" >/dev/null; then
    user_name=appuser
    getent passwd "$user_name" >/dev/null && user_name=appuser-$uid
    useradd --uid "$uid" --gid "$gid" --home-dir "$home" --no-create-home --shell /usr/sbin/nologin "$user_name"
  fi
  for dir in "$home" "$cache"; do
    if [[ ! -e $dir ]]; then
      mkdir -p "$dir"
      chown "$uid:$gid" "$dir"
    elif [[ -d $dir && $(stat -c %u "$dir") == 0 && -z $(ls -A "$dir") ]]; then
      # A folder Docker created for a bind mount whose host path did not exist: root's, and empty.
      chown "$uid:$gid" "$dir"
    fi
  done
else
  if [[ -n ${USER_ID:-} && $USER_ID != "$(id -u)" ]] || [[ -n ${GROUP_ID:-} && $GROUP_ID != "$(id -g)" ]]; then
    log "warning: started as $(id -u):$(id -g), which cannot switch to USER_ID:GROUP_ID=$uid:$gid (that needs root); running as $(id -u):$(id -g)"
  fi
  uid=$(id -u)
  gid=$(id -g)
  mkdir -p "$cache" 2>/dev/null || true
fi
# LinTO-STT-NeMo's documented `-v CACHE:/var/www/.cache` with USER_ID set mounts a folder that is no longer used.
if [[ $home != /var/www && $cache != /var/www/.cache ]] && mountpoint -q /var/www/.cache 2>/dev/null; then
  log "warning: a volume is mounted at /var/www/.cache, but with USER_ID or GROUP_ID set the cache is $cache: mount it there"
fi
as_service test -w "$cache" ||
  log "warning: the cache $cache is not writable by $uid:$gid: models cannot be downloaded into it (mount it writable, or set USER_ID and GROUP_ID to its owner)"

# A mounted .nemo file: say now if the service user cannot read it, rather than as a load error later.
if [[ -n ${MODEL:-} && -e $MODEL ]] && ! as_service test -r "$MODEL"; then
  die "MODEL=$MODEL is not readable by $uid:$gid: make it readable, or set USER_ID and GROUP_ID to its owner"
fi

caps=()
if [[ $uid != 0 ]]; then
  unprivileged_from=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo 1024)
  for port in "${ports[@]}"; do
    if ! is_uint "$port" || (( port >= unprivileged_from )); then
      continue
    fi
    if [[ $(id -u) == 0 ]] && can_keep_bind_cap; then
      caps=(--inh-caps=+net_bind_service --ambient-caps=+net_bind_service)
    else
      log "warning: port $port is below $unprivileged_from and uid $uid may not bind it: set HTTP_PORT or STREAMING_PORT to $unprivileged_from or above"
    fi
  done
fi

if [[ $(id -u) == 0 && $uid != 0 ]]; then
  exec setpriv --reuid="$uid" --regid="$gid" --clear-groups "${caps[@]}" -- nemo-stt "$@"
fi
exec nemo-stt "$@"
