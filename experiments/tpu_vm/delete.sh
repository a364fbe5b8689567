#!/usr/bin/env bash
# Deletes the slice (or its queued resource). Checkpoints and metrics stay in the run's gs:// output_dir.
#   experiments/tpu_vm/delete.sh --name=bert-base [--provisioning=queued] [--dry_run]
source "$(dirname "$0")/common.sh"
parse_args "$@"
delete_slice
