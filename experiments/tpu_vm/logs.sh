#!/usr/bin/env bash
# Follows the run's log on worker 0 (process 0 prints the progress); Ctrl-C stops following, not the run.
#   experiments/tpu_vm/logs.sh --name=bert-base [--dry_run]
source "$(dirname "$0")/common.sh"
parse_args "$@"
ssh_workers 0 "tail -n 100 -F $JOB_DIR/log.txt"
