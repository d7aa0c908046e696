#!/usr/bin/env bash
# deploy.sh: put the tinysense device app on a Raspberry Pi as a service,
# or lay out the microcontroller firmware where a board tool can flash it.
#
#   ./deploy.sh pi USER@HOST --model BUNDLE_DIR [options]   install or update the app, start it
#   ./deploy.sh status USER@HOST | logs USER@HOST | remove USER@HOST
#   ./deploy.sh unit --model BUNDLE_DIR [options]           print the systemd unit it would write
#   ./deploy.sh firmware BUNDLE_DIR --board BOARD --out DIR [--flash PORT] [--platformio]
#
# Only ssh keys or the ssh agent are used: no password or secret is read, stored or passed.
set -euo pipefail

PROG=deploy.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# options, with their defaults (several reach remote scripts by name, through vars)
# shellcheck disable=SC2034
DRY_RUN=0
MODEL=""
SOURCE="replay:testset.npz?loop=1"
PORTS=()
PORT=""  # the serial port among PORTS, for the preflight checks
MQTT_CREDENTIALS=""
DASHBOARD_TOKEN=""
DASHBOARD=""
PERIOD="1"
FORMAT="jsonl"
SSH_PORT=""
SSH_CONFIG=""
REMOTE_DIR=""
REMOTE_PYTHON="python3"
USE_SYSTEMD=1
ANY_ARCH=0
ALLOW_ROOT=0
BOARD=""
OUT=""
FLASH_PORT=""
PLATFORMIO=0

usage() {
  cat <<'EOF'
usage:
  ./deploy.sh pi USER@HOST --model BUNDLE_DIR [--source SPEC] [--port PORT]... [--period S]
              [--format jsonl|binary] [--mqtt-credentials FILE] [--dashboard HOST:PORT]
              [--dashboard-token FILE]
              [--ssh-port N] [--ssh-config FILE] [--remote-dir DIR]
              [--python PATH] [--no-systemd] [--any-arch] [--allow-root] [--dry-run]
  ./deploy.sh status USER@HOST [ssh options]     the service and its last lines
  ./deploy.sh logs USER@HOST [ssh options]       recent output
  ./deploy.sh remove USER@HOST [ssh options]     stop it and delete everything deploy.sh put there
  ./deploy.sh unit --model BUNDLE_DIR [options]  print the systemd unit
  ./deploy.sh firmware BUNDLE_DIR --board nano33ble|esp32s3|pico --out DIR [--flash PORT]
              [--platformio] [--dry-run]

Defaults: --source replay:testset.npz?loop=1 (a path relative to the bundle), --port /dev/serial0,
--period 1, --format jsonl, --remote-dir ~/tinysense (an absolute path when given). --port repeats
(serial and mqtt://HOST/PREFIX?device=ID at once); --mqtt-credentials FILE (user name, then password)
is copied to the Pi with mode 0600 and read by the service, never put on a command line.
--dashboard 0.0.0.0:8080 serves the live dashboard from the Pi; any address but loopback needs
--dashboard-token FILE (mode 0600: the token on its first line), copied as the MQTT login is. --any-arch
allows a host that is not a Pi (aarch64 or armv7l), for testing on any Linux machine. The service
runs as the user who logs in; root is refused unless --allow-root.
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
say() { printf '%s\n' "$*" >&2; }

# One shell-quoted line for a command and its arguments (bash's %q).
quote() {
  local out="" arg
  for arg in "$@"; do out+=" $(printf '%q' "$arg")"; done
  printf '%s' "${out# }"
}

# Run a local command, or print it under --dry-run.
run() {
  if ((DRY_RUN)); then printf '+ %s\n' "$(quote "$@")"; else "$@"; fi
}

# ---- argument checks ---------------------------------------------------------

check_host() {
  # user@host, where each part is a plain name: nothing a shell or ssh would read as syntax or an option
  [[ $1 =~ ^[A-Za-z_][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.:-]*$ ]] ||
    die "'$1' is not USER@HOST (letters, digits, '.', '-', '_' only), e.g. pi@raspberrypi.local"
}

check_value() {
  # any text, but no control characters: they would break the unit file and the log lines
  [[ $2 != *[[:cntrl:]]* ]] || die "$1 must not contain control characters"
}

# deploy.sh's own options here; what the service runs with is checked by the app's own code (check_app)
check_options() {
  [[ -z $SSH_PORT || $SSH_PORT =~ ^[0-9]+$ ]] || die "--ssh-port must be a number, not '$SSH_PORT'"
  [[ -z $SSH_CONFIG || -f $SSH_CONFIG ]] || die "--ssh-config $SSH_CONFIG does not exist"
  [[ -z $REMOTE_DIR || $REMOTE_DIR == /* ]] || die "--remote-dir must be an absolute path, not '$REMOTE_DIR'"
  ((${#PORTS[@]})) || PORTS=(/dev/serial0)
  local name p mqtt=0
  for name in SOURCE REMOTE_DIR REMOTE_PYTHON DASHBOARD; do check_value "--${name,,}" "${!name}"; done
  for p in "${PORTS[@]}"; do
    check_value --port "$p"
    if [[ $p == mqtt://* || $p == mqtts://* ]]; then
      mqtt=1
    elif [[ $p == /* && -z $PORT ]]; then
      PORT=$p
    fi
  done
  if [[ -n $MQTT_CREDENTIALS ]]; then
    ((mqtt)) || die "--mqtt-credentials needs an MQTT --port (mqtt://HOST/PREFIX?device=ID)"
    [[ -f $MQTT_CREDENTIALS ]] || die "--mqtt-credentials $MQTT_CREDENTIALS does not exist"
  fi
  if [[ -n $DASHBOARD_TOKEN ]]; then
    [[ -n $DASHBOARD ]] || die "--dashboard-token needs --dashboard HOST:PORT"
    [[ -f $DASHBOARD_TOKEN ]] || die "--dashboard-token $DASHBOARD_TOKEN does not exist"
  fi
}

# python -m device.service from this checkout, with the repository's venv ('make venv'): the app's
# own parsers check the options and write the unit, so no rule is written twice
app_service() {
  local py=python3
  [[ -x $HERE/.venv/bin/python ]] && py=$HERE/.venv/bin/python
  "$py" -c 'import numpy' 2>/dev/null ||
    die "deploy.sh checks the options with the app's own code and needs its Python packages: run 'make venv' first"
  PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$py" -m device.service "$@"
}

# The service's options and the bundle, refused with one line as the app would refuse them at start.
check_app() {
  [[ -n $MODEL ]] || die "--model BUNDLE_DIR is required (build one with: python -m build_model --out DIR)"
  device_args
  app_service check ${DASHBOARD_TOKEN:+--token-file "$DASHBOARD_TOKEN"} -- "${DEVICE_ARGS[@]}" --model "$MODEL" || exit 1
}

# ---- ssh ---------------------------------------------------------------------

ssh_cmd() {
  SSH=(ssh -o BatchMode=yes -o ConnectTimeout=10)
  [[ -n $SSH_CONFIG ]] && SSH+=(-F "$SSH_CONFIG")
  [[ -n $SSH_PORT ]] && SSH+=(-p "$SSH_PORT")
  return 0
}

# Run a bash script on the target. Values reach it through the 'vars' preamble, each %q-quoted,
# so spaces or shell characters in a path or label are data, never commands.
remote() {
  local script=$1
  if ((DRY_RUN)); then
    printf '+ %s bash -s <<SCRIPT\n%s\nSCRIPT\n' "$(quote "${SSH[@]}" "$HOST")" "$script"
    return 0
  fi
  "${SSH[@]}" "$HOST" 'bash -s' <<<"$script"
}

vars() {
  # vars NAME... -> "NAME=<quoted value>" lines for a remote script
  local name
  for name in "$@"; do printf '%s=%q\n' "$name" "${!name}"; done
}

# ---- what runs on the target ------------------------------------------------------
# Plain bash functions, sent whole with declare -f (so shellcheck reads them as code); the values
# they use arrive through the vars preamble, each %q-quoted. on_target NAME VAR... runs
# on_target_NAME there after the prelude.

# shellcheck disable=SC2034  # DIR is read by the other target functions
on_target_prelude() {
  set -euo pipefail
  DIR=${REMOTE_DIR:-$HOME/tinysense}
}
is_ours() { [[ -f $DIR/.tinysense ]]; }
app_running() {
  if [[ -f $DIR/mode && $(cat "$DIR/mode") == systemd ]]; then systemctl is-active --quiet tinysense
  else [[ -f $DIR/tinysense.pid ]] && kill -0 "$(cat "$DIR/tinysense.pid")" 2>/dev/null; fi
}
stop_app() {
  if [[ -f $DIR/mode && $(cat "$DIR/mode") == systemd ]]; then
    sudo -n systemctl stop tinysense 2>/dev/null || true
  elif [[ -f $DIR/tinysense.pid ]]; then
    pid=$(cat "$DIR/tinysense.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$DIR/tinysense.pid"
  fi
}

on_target() {
  local fn=on_target_$1
  shift
  remote "$(vars "$@")
$(declare -f on_target_prelude is_ours app_running stop_app "$fn")
on_target_prelude
$fn"
}

# shellcheck disable=SC2154  # need_camera, fingerprint, app_sha, bundle_sha, mode, args come through vars
on_target_preflight() {
  problems=0
  problem() { printf 'problem: %s\n' "$*"; problems=$((problems + 1)); }
  # shellcheck source=/dev/null  # the target's own file
  os=$( (. /etc/os-release && printf '%s' "$PRETTY_NAME") 2>/dev/null || uname -s)
  arch=$(uname -m)
  printf 'target: %s, %s\n' "$os" "$arch"
  case $arch in
    aarch64) ;;
    armv7l) printf 'note: 32-bit OS: tflite-runtime with numpy<2 is installed (ai-edge-litert has no armv7l wheels)\n' ;;
    *) ((ANY_ARCH)) || problem "architecture $arch is not a Raspberry Pi's (aarch64, armv7l): use 64-bit Raspberry Pi OS, or --any-arch to try anyway" ;;
  esac
  if ! command -v "$REMOTE_PYTHON" >/dev/null; then
    problem "$REMOTE_PYTHON is not installed: sudo apt install python3 python3-venv"
  else
    v=$("$REMOTE_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    "$REMOTE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
      problem "Python $v is too old (3.10+ needed): upgrade to Raspberry Pi OS Bookworm or later"
    "$REMOTE_PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
      problem 'the venv module is missing: sudo apt install python3-venv'
    printf 'python: %s\n' "$v"
    if ((need_camera)); then
      "$REMOTE_PYTHON" -c 'import picamera2' 2>/dev/null ||
        problem 'picamera2 is not importable: sudo apt install python3-picamera2'
    fi
  fi
  mkdir -p "$(dirname "$DIR")"
  free_kb=$(df -Pk "$(dirname "$DIR")" | awk 'NR == 2 { print $4 }')
  ((free_kb > 300 * 1024)) || problem "only $((free_kb / 1024)) MiB free under $(dirname "$DIR"): 300 MiB needed, free some space"
  if [[ $PORT == /* ]]; then
    if [[ ! -e $PORT ]]; then
      problem "serial port $PORT does not exist: enable it with raspi-config (Interface Options > Serial Port), or pass --port"
    else
      dev=$(basename "$(readlink -f "$PORT")")
      # shellcheck disable=SC2009  # whole command lines, matched on the tty as a word
      if ps -eo args= | grep -E "[g]etty.*\b$dev\b" >/dev/null; then
        problem "a login console (getty) holds $dev: sudo systemctl disable --now serial-getty@$dev, and remove console=serial0 from /boot/firmware/cmdline.txt"
      fi
    fi
  fi
  if [[ $(id -u) == 0 ]] && ! ((ALLOW_ROOT)); then
    problem 'you logged in as root, and the service would run as root: log in as an ordinary user (pi), or pass --allow-root'
  fi
  if [[ $(id -u) != 0 ]]; then
    groups=" $(id -nG) "
    if [[ $PORT == /dev/tty* || $PORT == /dev/serial* ]] && [[ $groups != *' dialout '* ]]; then
      problem "$(id -un) is not in the dialout group: sudo usermod -aG dialout $(id -un), then log in again"
    fi
    if ((need_camera)) && [[ $groups != *' video '* ]]; then
      problem "$(id -un) is not in the video group: sudo usermod -aG video $(id -un), then log in again"
    fi
  fi
  if ((USE_SYSTEMD)); then
    command -v systemctl >/dev/null || problem 'systemd is not running here: pass --no-systemd'
    sudo -n true 2>/dev/null || problem 'installing the service needs passwordless sudo: run sudo visudo, or pass --no-systemd'
  fi
  if [[ -e $DIR ]] && ! is_ours; then
    problem "$DIR exists and was not made by deploy.sh: pass another --remote-dir"
  fi
  exit $((problems > 0))
}

on_target_probe() {
  if is_ours && [[ -f $DIR/fingerprint && $(cat "$DIR/fingerprint") == "$fingerprint" ]] && app_running; then
    echo same
  elif is_ours && [[ -f $DIR/app.sha && $(cat "$DIR/app.sha") == "$app_sha" ]] && [[ -x $DIR/venv/bin/python ]]; then
    echo app-ok
  else
    echo fresh
  fi
}

on_target_prepare_app() {
  mkdir -p "$DIR" && touch "$DIR/.tinysense" && rm -rf "$DIR/app.new" && mkdir "$DIR/app.new"
}

on_target_install_app() {
  rm -rf "$DIR/app" && mv "$DIR/app.new" "$DIR/app"
  [[ -x $DIR/venv/bin/python ]] || "$REMOTE_PYTHON" -m venv --system-site-packages "$DIR/venv"
  export PIP_NO_CACHE_DIR=1  # leave no ~/.cache/pip behind: remove deletes all deploy.sh made
  "$DIR/venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  if [[ $(uname -m) == armv7l ]]; then
    # no ai-edge-litert wheels for 32-bit Pi OS; tflite-runtime breaks with numpy 2
    "$DIR/venv/bin/python" -m pip install -q 'numpy<2' tflite-runtime
  fi
  "$DIR/venv/bin/python" -m pip install -q "$DIR/app[device]"
  "$DIR/venv/bin/python" -c 'import contract.runtime as r; r.interpreter_module()'
  echo "$app_sha" > "$DIR/app.sha"
}

on_target_prepare_bundle() {
  mkdir -p "$DIR/bundles" && rm -rf "$DIR/bundles/$bundle_sha.new" && mkdir "$DIR/bundles/$bundle_sha.new"
}

on_target_start() {
  b="$DIR/bundles/$bundle_sha"
  rm -rf "$b" && mv "$b.new" "$b"
  device_args=()
  eval "device_args=($args)"  # %q-quoted words: data, never commands
  # the whole bundle gate with this Pi's interpreter, before anything running is touched
  (cd "$b" && "$DIR/venv/bin/python" -m device.service check --interpreter -- "${device_args[@]}") || exit 1
  if [[ $mode == systemd ]]; then
    "$DIR/venv/bin/python" -m device.service unit --dir "$DIR" --user "$(id -un)" -- "${device_args[@]}" \
      > "$DIR/tinysense.service.new" || exit 1
  fi
  ln -sfn "bundles/$bundle_sha" "$DIR/current.new" && mv -T "$DIR/current.new" "$DIR/current"
  stop_app
  echo "$mode" > "$DIR/mode"
  if [[ $mode == systemd ]]; then
    mv -f "$DIR/tinysense.service.new" "$DIR/tinysense.service"
    sudo -n install -m 644 "$DIR/tinysense.service" /etc/systemd/system/tinysense.service
    sudo -n systemctl daemon-reload
    sudo -n systemctl enable --quiet tinysense
    sudo -n systemctl restart tinysense
  else
    cd "$DIR/current"
    cmd=${args//@DIR@/$(printf '%q' "$DIR")}
    touch "$DIR/tinysense.log"
    n0=$(wc -l < "$DIR/tinysense.log")
    # restarts the app when it fails; a clean exit (SIGTERM) ends the loop
    setsid bash -c "until $(printf '%q' "$DIR/venv/bin/python") -m device $cmd; do sleep 2; done" \
      >> "$DIR/tinysense.log" 2>&1 < /dev/null &
    echo $! > "$DIR/tinysense.pid"
  fi
  for old in "$DIR"/bundles/*; do [[ $old == "$b" ]] || rm -rf "$old"; done
  sleep 3
  if [[ $mode == systemd ]]; then
    restarts=$(systemctl show -p NRestarts --value tinysense 2>/dev/null || echo 0)
    if ! app_running || ((restarts > 0)); then
      echo 'the app does not stay up; its last lines:'; journalctl -u tinysense -n 5 --no-pager; exit 1
    fi
  else
    err=$(tail -n "+$((n0 + 1))" "$DIR/tinysense.log" | grep -m1 'error:' || true)
    if [[ -n $err ]] || ! app_running; then
      stop_app
      echo "the app does not stay up: ${err:-see $DIR/tinysense.log}"; exit 1
    fi
  fi
  echo "$fingerprint" > "$DIR/fingerprint"
}

on_target_status() {
  is_ours || { echo "nothing deployed in $DIR"; exit 1; }
  echo "mode: $(cat "$DIR/mode"), bundle: $(readlink "$DIR/current")"
  if [[ $(cat "$DIR/mode") == systemd ]]; then
    systemctl status tinysense --no-pager -n 5 || true
  else
    if app_running; then echo "running (pid $(cat "$DIR/tinysense.pid"))"; else echo 'not running'; fi
    tail -n 5 "$DIR/tinysense.log" 2>/dev/null || true
  fi
  app_running
}

on_target_logs() {
  is_ours || { echo "nothing deployed in $DIR"; exit 1; }
  if [[ $(cat "$DIR/mode") == systemd ]]; then journalctl -u tinysense -n 50 --no-pager
  else tail -n 50 "$DIR/tinysense.log"; fi
}

on_target_remove() {
  is_ours || { echo "nothing deployed in $DIR"; exit 0; }
  stop_app
  if [[ $(cat "$DIR/mode" 2>/dev/null) == systemd ]]; then
    sudo -n systemctl disable --quiet tinysense 2>/dev/null || true
    sudo -n rm -f /etc/systemd/system/tinysense.service
    sudo -n systemctl daemon-reload || true
  fi
  rm -rf "$DIR"
  echo "removed $DIR"
}

# ---- preflight on the target -------------------------------------------------

preflight() {
  local need_camera=0
  # shellcheck disable=SC2034  # read by name in vars
  [[ $SOURCE == picamera2* ]] && need_camera=1
  on_target preflight REMOTE_DIR REMOTE_PYTHON PORT USE_SYSTEMD ANY_ARCH ALLOW_ROOT need_camera
}

# ---- what is deployed --------------------------------------------------------

# A tar of the app (device/, the contract/ and dashboard/ it imports, packaging files),
# byte-identical for identical sources.
app_tar() {
  tar -C "$HERE" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --exclude=__pycache__ -cf - contract dashboard device pyproject.toml README.md
}

bundle_tar() {
  local files=(model.tflite model.json)
  [[ -f $MODEL/testset.npz ]] && files+=(testset.npz)
  tar -C "$MODEL" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - "${files[@]}"
}

sha() { sha256sum | cut -c1-16; }

# The options of python -m device for the service, relative to the deploy folder (@DIR@ stands
# for it); the bundle folder is its cwd.
device_args() {
  local p
  DEVICE_ARGS=(--model . --source "$SOURCE" --period "$PERIOD" --format "$FORMAT")
  for p in "${PORTS[@]}"; do
    if [[ -n $MQTT_CREDENTIALS && ( $p == mqtt://* || $p == mqtts://* ) ]]; then
      # the path of the copied file (@DIR@: the deploy folder), not the secret itself
      [[ $p == *\?* ]] && p+="&" || p+="?"
      p+="credentials=@DIR@/mqtt-credentials"
    fi
    DEVICE_ARGS+=(--port "$p")
  done
  [[ -z $DASHBOARD ]] || DEVICE_ARGS+=(--dashboard "$DASHBOARD")
  [[ -z $DASHBOARD_TOKEN ]] || DEVICE_ARGS+=(--dashboard-token @DIR@/dashboard-token)
}

# ---- pi ------------------------------------------------------------------------

# put_secret LOCAL_FILE NAME WHAT: LOCAL_FILE to $rdir/NAME on the Pi with mode 0600, never on a command line
put_secret() {
  local put
  say "copying $3 (mode 0600) ..."
  put="umask 077 && cat > $(printf '%q' "$rdir/$2.new") && chmod 600 $(printf '%q' "$rdir/$2.new") && mv -f $(printf '%q' "$rdir/$2.new") $(printf '%q' "$rdir/$2")"
  if ((DRY_RUN)); then
    printf '+ %s < %s\n' "$(quote "${SSH[@]}" "$HOST" "$put")" "$(quote "$1")"
  else
    "${SSH[@]}" "$HOST" "$put" < "$1" || die "copying $3 to $HOST failed"
  fi
}

deploy_pi() {
  check_host "$HOST"
  check_options
  check_app
  ssh_cmd
  say "checking $HOST ..."
  if ! preflight; then
    die "fix the problems above on $HOST, then run deploy.sh again"
  fi

  local app_sha bundle_sha config_sha mode
  app_sha=$(app_tar | sha)
  bundle_sha=$(bundle_tar | sha)
  mode=$( ((USE_SYSTEMD)) && echo systemd || echo background)
  device_args
  config_sha=$( { printf '%s\n' "$mode" "${DEVICE_ARGS[@]}"; [[ -z $MQTT_CREDENTIALS ]] || cat "$MQTT_CREDENTIALS"; [[ -z $DASHBOARD_TOKEN ]] || cat "$DASHBOARD_TOKEN"; } | sha)
  # shellcheck disable=SC2034  # read by name in vars
  local fingerprint="$app_sha $bundle_sha $config_sha"
  # where tar unpacks: --remote-dir, or ~/tinysense (ssh starts in the home folder)
  local rdir=${REMOTE_DIR:-tinysense}

  # 1. compare what is there with what would be deployed
  local state
  if ((DRY_RUN)); then
    on_target probe REMOTE_DIR fingerprint app_sha
    state=fresh
  else
    state=$(on_target probe REMOTE_DIR fingerprint app_sha) || die "cannot reach $HOST over ssh: check the host, your key (ssh-add) and --ssh-port"
  fi
  if [[ $state == same ]]; then
    say "$HOST is up to date: same app, bundle and settings, and it is running; nothing changed"
    return 0
  fi

  # 2. the app, only when it changed, and its venv
  if [[ $state != app-ok ]]; then
    say "copying the app and creating the venv (the device extra) ..."
    on_target prepare_app REMOTE_DIR
    if ((DRY_RUN)); then
      printf '+ app_tar | %s tar -xf - -C <remote-dir>/app.new\n' "$(quote "${SSH[@]}" "$HOST")"
    else
      app_tar | "${SSH[@]}" "$HOST" "tar -xf - -C $(printf '%q' "$rdir/app.new")"
    fi
    on_target install_app REMOTE_DIR REMOTE_PYTHON app_sha
  fi

  # 3. the bundle, swapped in atomically: a new folder, then one rename of the 'current' link
  say "copying the bundle ($bundle_sha) ..."
  on_target prepare_bundle REMOTE_DIR bundle_sha
  if ((DRY_RUN)); then
    printf '+ bundle_tar | %s tar -xf - -C <remote-dir>/bundles/%s.new\n' "$(quote "${SSH[@]}" "$HOST")" "$bundle_sha"
  else
    bundle_tar | "${SSH[@]}" "$HOST" "tar -xf - -C $(printf '%q' "$rdir/bundles/$bundle_sha.new")"
  fi

  # 4. the MQTT login and the dashboard's token, readable by the service's user alone
  [[ -z $MQTT_CREDENTIALS ]] || put_secret "$MQTT_CREDENTIALS" mqtt-credentials "the MQTT credentials"
  [[ -z $DASHBOARD_TOKEN ]] || put_secret "$DASHBOARD_TOKEN" dashboard-token "the dashboard token"

  # 5. the service (or a supervised background process), then start; the Pi checks the bundle with
  # its own interpreter and writes the unit with the app's own code
  local args
  # shellcheck disable=SC2034  # read by name in vars
  args=$(quote "${DEVICE_ARGS[@]}")
  on_target start REMOTE_DIR bundle_sha fingerprint mode args || die "starting the app on $HOST failed (see the lines above)"
  if ((DRY_RUN)); then
    say "dry run: nothing was changed"
  else
    say "deployed to $HOST: $mode, bundle $bundle_sha; see it with ./deploy.sh status $HOST"
  fi
}

status_pi() {
  check_host "$HOST"
  ssh_cmd
  on_target status REMOTE_DIR
}

logs_pi() {
  check_host "$HOST"
  ssh_cmd
  on_target logs REMOTE_DIR
}

remove_pi() {
  check_host "$HOST"
  ssh_cmd
  on_target remove REMOTE_DIR
}

# ---- firmware ----------------------------------------------------------------

# The board table, the project layouts, the names and the build/flash step live in Python
# (firmware_export/boards.py, boards in hardware.py), so the sketch folder, the .ino and the C names agree.
deploy_firmware() {
  [[ -n $MODEL ]] || die "firmware needs a bundle folder: ./deploy.sh firmware BUNDLE_DIR --board BOARD --out DIR"
  [[ -d $MODEL ]] || die "bundle folder $MODEL does not exist"  # the rest of the bundle gate: firmware_export's
  [[ -n $BOARD ]] || die "--board is required: nano33ble, esp32s3 or pico"
  [[ -n $OUT ]] || die "--out DIR is required"
  local py="$HERE/.venv/bin/python" layout=arduino
  [[ -x $py ]] || py=python3
  ((PLATFORMIO)) && layout=platformio
  [[ -e $OUT ]] && die "$OUT exists: remove it or choose another --out"
  run "$py" -m firmware_export "$MODEL" --out "$OUT" --layout "$layout" --board "$BOARD" \
    ${FLASH_PORT:+--flash "$FLASH_PORT"}
}

# ---- command line --------------------------------------------------------------

# shellcheck disable=SC2034  # options reach remote scripts by name, through vars
parse_options() {
  while (($#)); do
    case $1 in
      --model) MODEL=${2?--model needs a value}; shift ;;
      --source) SOURCE=${2?--source needs a value}; shift ;;
      --port) PORTS+=("${2?--port needs a value}"); shift ;;
      --mqtt-credentials) MQTT_CREDENTIALS=${2?--mqtt-credentials needs a file}; shift ;;
      --dashboard) DASHBOARD=${2?--dashboard needs HOST:PORT}; shift ;;
      --dashboard-token) DASHBOARD_TOKEN=${2?--dashboard-token needs a file}; shift ;;
      --period) PERIOD=${2?--period needs a value}; shift ;;
      --format) FORMAT=${2?--format needs a value}; shift ;;
      --ssh-port) SSH_PORT=${2?--ssh-port needs a value}; shift ;;
      --ssh-config) SSH_CONFIG=${2?--ssh-config needs a value}; shift ;;
      --remote-dir) REMOTE_DIR=${2?--remote-dir needs a value}; shift ;;
      --python) REMOTE_PYTHON=${2?--python needs a value}; shift ;;
      --board) BOARD=${2?--board needs a value}; shift ;;
      --out) OUT=${2?--out needs a value}; shift ;;
      --flash) FLASH_PORT=${2?--flash needs a port}; shift ;;
      --platformio) PLATFORMIO=1 ;;
      --no-systemd) USE_SYSTEMD=0 ;;
      --any-arch) ANY_ARCH=1 ;;
      --allow-root) ALLOW_ROOT=1 ;;
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown option '$1' (see ./deploy.sh --help)" ;;
    esac
    shift
  done
}

main() {
  (($#)) || { usage >&2; exit 2; }
  local cmd=$1
  shift
  case $cmd in
    pi | status | logs | remove)
      (($#)) || die "$cmd needs USER@HOST"
      HOST=$1
      shift
      parse_options "$@"
      case $cmd in
        pi) deploy_pi ;;
        status) status_pi ;;
        logs) logs_pi ;;
        remove) remove_pi ;;
      esac
      ;;
    unit)
      parse_options "$@"
      check_options
      check_app
      local user=${USER:-pi}
      app_service unit --dir "${REMOTE_DIR:-/home/$user/tinysense}" --user "$user" -- "${DEVICE_ARGS[@]}" || exit 1
      ;;
    firmware)
      if (($#)) && [[ $1 != --* ]]; then MODEL=$1; shift; fi
      parse_options "$@"
      deploy_firmware
      ;;
    -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
