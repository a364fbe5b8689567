#!/usr/bin/env bash
# One whole job: create the slice, install the package on every worker, launch the run on all of them, watch it
# (printing the log's tail), re-create and re-launch after a preemption (the run resumes from its last
# checkpoint in gs://), and delete the slice when the run has ended, whatever its outcome.
#
#   experiments/tpu_vm/run_job.sh --name=bert-base --accelerator_type=v4-32 --provisioning=spot \
#     --flagfile=experiments/bert_base_phase1_lamb.flags --package=git+https://github.com/OWNER/bertgpt_jax [--dry_run]
#
# --check_fit first compiles the run for the slice on this machine (no TPU: pip install -e '.[tpu]') and stops
# before creating anything if it does not fit:
#   python -m bertgpt_jax.pretrain --flagfile=experiments/bert_base_phase1_lamb.flags --compile_only --topology=v4-32
source "$(dirname "$0")/common.sh"
parse_args "$@"
require_flagfile

if [[ "$CHECK_FIT" == 1 ]]; then
  if [[ "$FLAGFILE" == gs://* ]]; then echo "run_job.sh: --check_fit needs a local --flagfile" >&2; exit 2; fi
  run "$PYTHON" -m bertgpt_jax.pretrain --flagfile="$FLAGFILE" --compile_only --topology="$ACCELERATOR_TYPE"
fi
trap 'echo "run_job.sh: interrupted; the slice $TPU_NAME is still up: experiments/tpu_vm/delete.sh --name=$TPU_NAME" >&2' INT
create_slice
install_package
launch_run
relaunches=0
while true; do
  sleep "$POLL_SECONDS"
  state=$(slice_state)
  if [[ "$state" != READY ]]; then
    # Preempted (spot), under maintenance or gone: a fresh slice, the same run resumed from its checkpoint.
    relaunches=$((relaunches + 1))
    echo "run_job.sh: slice $TPU_NAME is '${state:-gone}'; re-creating it and resuming the run (relaunch $relaunches)" >&2
    delete_slice || true
    create_slice
    install_package
    launch_run
    continue
  fi
  status=$(run_status)
  show_log 5
  case "$status" in
    running|unreachable) ;;
    0) echo "run_job.sh: the run finished (exit status 0) after $relaunches relaunch(es)" >&2; break ;;
    *) echo "run_job.sh: the run failed with exit status $status; its log:" >&2; show_log 50; delete_slice; exit 1 ;;
  esac
done
delete_slice
