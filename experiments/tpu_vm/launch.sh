#!/usr/bin/env bash
# Starts python -m bertgpt_jax.pretrain --flagfile=... on every worker at once, detached. Re-running it after a
# preemption resumes the run from its last checkpoint (--output_dir on gs://).
#   experiments/tpu_vm/launch.sh --name=bert-base --flagfile=experiments/bert_base_phase1_lamb.flags [--dry_run]
source "$(dirname "$0")/common.sh"
parse_args "$@"
require_flagfile
launch_run
