# Settings and helpers shared by the TPU VM job scripts (sourced, not run).
#
# Every script takes the same options (or the environment variables of the same names in capitals):
#   --name=NAME                TPU VM (or queued resource) name          TPU_NAME        (default bertgpt-job)
#   --zone=ZONE                                                          ZONE            (default us-central2-b)
#   --project=PROJECT          gcloud project (default: gcloud's own)    PROJECT
#   --accelerator_type=TYPE    slice, as for --topology: v4-32, ...      ACCELERATOR_TYPE (default v4-8)
#   --runtime_version=VERSION  TPU VM image (default: by generation)     RUNTIME_VERSION
#   --provisioning=MODE        on-demand | spot | queued                 PROVISIONING    (default on-demand)
#   --package=SOURCE           what pip installs on every worker: a git URL, a gs:// wheel, or a package name
#                                                                        PACKAGE_SOURCE  (default: the PyPI name)
#   --flagfile=PATH            the run's flagfile, local or gs://        FLAGFILE
#   --poll_seconds=N           how often run_job.sh checks the slice     POLL_SECONDS    (default 300)
#   --check_fit                run_job.sh: compile the run for the slice here first (--compile_only)  CHECK_FIT=1
#   --dry_run                  print every command, run none             DRY_RUN=1
set -euo pipefail

TPU_NAME="${TPU_NAME:-bertgpt-job}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
PROVISIONING="${PROVISIONING:-on-demand}"
PACKAGE_SOURCE="${PACKAGE_SOURCE:-bertgpt_jax}"
FLAGFILE="${FLAGFILE:-}"
POLL_SECONDS="${POLL_SECONDS:-300}"
DRY_RUN="${DRY_RUN:-0}"
CHECK_FIT="${CHECK_FIT:-0}"
PYTHON="${PYTHON:-python3}"  # this machine's Python with the package and its tpu extra, for --check_fit
JOB_DIR='$HOME/bertgpt_job'  # on the workers: the flagfile, the log and the exit status

usage() {
  sed -n '2,/^source/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  echo
  sed -n '3,/^set -euo/p' "$(dirname "${BASH_SOURCE[0]}")/common.sh" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
}

parse_args() {
  for arg in "$@"; do
    case "$arg" in
      --name=*) TPU_NAME="${arg#*=}" ;;
      --zone=*) ZONE="${arg#*=}" ;;
      --project=*) PROJECT="${arg#*=}" ;;
      --accelerator_type=*) ACCELERATOR_TYPE="${arg#*=}" ;;
      --runtime_version=*) RUNTIME_VERSION="${arg#*=}" ;;
      --provisioning=*) PROVISIONING="${arg#*=}" ;;
      --package=*) PACKAGE_SOURCE="${arg#*=}" ;;
      --flagfile=*) FLAGFILE="${arg#*=}" ;;
      --poll_seconds=*) POLL_SECONDS="${arg#*=}" ;;
      --dry_run) DRY_RUN=1 ;;
      --check_fit) CHECK_FIT=1 ;;
      -h|--help) usage ;;
      *) echo "$(basename "$0"): unknown option $arg (--help lists the options)" >&2; exit 2 ;;
    esac
  done
  case "$PROVISIONING" in
    on-demand|spot|queued) ;;
    *) echo "$(basename "$0"): --provisioning=$PROVISIONING must be on-demand, spot or queued" >&2; exit 2 ;;
  esac
  if [[ ! "$ACCELERATOR_TYPE" =~ ^v[0-9a-z]+-[0-9]+$ ]]; then
    echo "$(basename "$0"): --accelerator_type=$ACCELERATOR_TYPE is not a slice name such as v4-32 or v5litepod-16" >&2
    exit 2
  fi
  if [[ -z "$RUNTIME_VERSION" ]]; then
    case "$ACCELERATOR_TYPE" in
      v4-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
      v5litepod-*|v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
      v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
      v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
      *) echo "$(basename "$0"): no default --runtime_version for $ACCELERATOR_TYPE; pass one" >&2; exit 2 ;;
    esac
  fi
  GCLOUD_COMMON=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then GCLOUD_COMMON+=(--project="$PROJECT"); fi
}

# Prints a command as a shell would read it back ("+ gcloud ... --command='...'").
show() {
  local out="+" a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@+,%-]+$ ]]; then out+=" $a"
    elif [[ "$a" =~ ^(--[a-z-]+=)(.*)$ ]]; then out+=" ${BASH_REMATCH[1]}'${BASH_REMATCH[2]//\'/\'\\\'\'}'"
    else out+=" '${a//\'/\'\\\'\'}'"; fi
  done
  echo "$out" >&2
}

# Runs a command, printing it first; with --dry_run only prints it.
run() {
  show "$@"
  if [[ "$DRY_RUN" == 1 ]]; then return 0; fi
  "$@"
}

# A command whose output the script reads; under --dry_run it prints the command and echoes $1 instead.
query() {
  local pretend="$1"; shift
  show "$@"
  if [[ "$DRY_RUN" == 1 ]]; then echo "$pretend"; return 0; fi
  "$@"
}

# Runs a shell command on the slice's workers: ssh_workers all|0 COMMAND.
ssh_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_COMMON[@]}" --worker="$1" --command="$2"
}

require_flagfile() {
  if [[ -z "$FLAGFILE" ]]; then
    echo "$(basename "$0"): --flagfile is required: the run's flagfile (local or gs://), e.g. experiments/bert_base_phase1_lamb.flags" >&2
    exit 2
  fi
  if [[ "$FLAGFILE" != gs://* && ! -f "$FLAGFILE" ]]; then
    echo "$(basename "$0"): --flagfile=$FLAGFILE does not exist" >&2
    exit 2
  fi
}

# ---- the steps of a job (each script below runs one; run_job.sh runs them all) ----

create_slice() {
  local spot=()
  if [[ "$PROVISIONING" == spot ]]; then spot=(--spot); fi
  if [[ "$PROVISIONING" == queued ]]; then
    # A queued resource waits for capacity instead of failing; the node appears once it is ACTIVE.
    run gcloud compute tpus queued-resources create "$TPU_NAME" "${GCLOUD_COMMON[@]}" --node-id="$TPU_NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION"
    local state
    while true; do
      state=$(query ACTIVE gcloud compute tpus queued-resources describe "$TPU_NAME" "${GCLOUD_COMMON[@]}" \
        --format='value(state.state)')
      case "$state" in
        ACTIVE) break ;;
        FAILED|SUSPENDED) echo "queued resource $TPU_NAME is $state" >&2; return 1 ;;
        *) echo "queued resource $TPU_NAME: $state; waiting" >&2; sleep "$POLL_SECONDS" ;;
      esac
    done
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_COMMON[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" "${spot[@]}"
  fi
}

install_package() {
  # Every worker gets the same package with the TPU runtime (the tpu extra pins libtpu to jax's).
  local spec
  case "$PACKAGE_SOURCE" in
    gs://*.whl) spec="\$HOME/$(basename "$PACKAGE_SOURCE")[tpu]"
                local fetch="gcloud storage cp $PACKAGE_SOURCE \$HOME/ && " ;;
    git+*|https://*|http://*) spec="bertgpt_jax[tpu] @ $PACKAGE_SOURCE"; local fetch="" ;;
    *) spec="$PACKAGE_SOURCE[tpu]"; local fetch="" ;;
  esac
  ssh_workers all "mkdir -p $JOB_DIR && ${fetch}python3 -m pip install -q --upgrade pip && python3 -m pip install -q '$spec'"
}

launch_run() {
  # The flagfile goes to every worker; the run starts on all of them at once, detached, its log and exit status
  # in $JOB_DIR. A relaunch after preemption is the same command: the run resumes from its last checkpoint.
  if [[ "$FLAGFILE" == gs://* ]]; then
    ssh_workers all "mkdir -p $JOB_DIR && gcloud storage cp $FLAGFILE $JOB_DIR/job.flags"
  else
    run gcloud compute tpus tpu-vm scp "$FLAGFILE" "$TPU_NAME:bertgpt_job/job.flags" "${GCLOUD_COMMON[@]}" --worker=all
  fi
  ssh_workers all "cd $JOB_DIR && rm -f exit_status && (nohup bash -c 'python3 -m bertgpt_jax.pretrain --flagfile=job.flags > log.txt 2>&1; echo \$? > exit_status' > /dev/null 2>&1 &)"
}

# READY, PREEMPTED, CREATING, ...; empty when the slice does not exist.
slice_state() {
  query READY gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_COMMON[@]}" --format='value(state)' || true
}

# The run's exit status on worker 0, or "running".
run_status() {
  query 0 gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_COMMON[@]}" --worker=0 \
    --command="cat $JOB_DIR/exit_status 2>/dev/null || echo running" || echo unreachable
}

show_log() {
  ssh_workers 0 "tail -n ${1:-20} $JOB_DIR/log.txt" || true
}

delete_slice() {
  if [[ "$PROVISIONING" == queued ]]; then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" "${GCLOUD_COMMON[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_COMMON[@]}" --quiet
  fi
}
