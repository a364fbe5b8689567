#!/usr/bin/env bash
# Creates the TPU VM slice (on-demand, spot, or a queued resource that waits for capacity).
#   experiments/tpu_vm/create.sh --name=bert-base --accelerator_type=v4-32 --zone=us-central2-b [--provisioning=spot] [--dry_run]
source "$(dirname "$0")/common.sh"
parse_args "$@"
create_slice
