#!/usr/bin/env bash
# Train in the image on test_dir/ (laid out like /opt/ml: tiny dataset and config), as
# SageMaker runs it: `docker run -v test_dir:/opt/ml IMAGE train`.
#   ./train_local.sh IMAGE [docker run options, e.g. --gpus all]
# The model lands in test_dir/model/ and test_dir/output/model.tar.gz; metric lines on stdout.
# DOCKER=podman to use podman; TEST_DIR to train on another folder laid out like /opt/ml.
set -euo pipefail
image=${1:?usage: train_local.sh IMAGE [docker run options]}
shift
test_dir=$(cd "${TEST_DIR:-$(dirname "$0")/test_dir}" && pwd)
mkdir -p "$test_dir/model" "$test_dir/output"
exec "${DOCKER:-docker}" run --rm -v "$test_dir:/opt/ml" "$@" "$image" train
