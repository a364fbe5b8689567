#!/usr/bin/env bash
# Installs the package with its TPU runtime on every worker of the slice (--worker=all).
#   experiments/tpu_vm/install.sh --name=bert-base --package=git+https://github.com/OWNER/bertgpt_jax [--dry_run]
# --package also takes a wheel on gs:// (python -m pip wheel --no-deps . ; gcloud storage cp *.whl gs://BUCKET/).
source "$(dirname "$0")/common.sh"
parse_args "$@"
install_package
