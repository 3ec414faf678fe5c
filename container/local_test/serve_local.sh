#!/usr/bin/env bash
# Serve the model in test_dir/model/ (trained by train_local.sh) as SageMaker runs it:
# `docker run -v test_dir:/opt/ml -p 8080:8080 IMAGE serve`, published on the loopback only.
#   ./serve_local.sh IMAGE [docker run options, e.g. --gpus all]
# Then ./predict.sh from another shell; Ctrl-C (SIGTERM with `docker stop`) stops it.
# DOCKER=podman to use podman; PORT for another host port; TEST_DIR for another /opt/ml folder.
set -euo pipefail
image=${1:?usage: serve_local.sh IMAGE [docker run options]}
shift
test_dir=$(cd "${TEST_DIR:-$(dirname "$0")/test_dir}" && pwd)
exec "${DOCKER:-docker}" run --rm -v "$test_dir:/opt/ml" -p "127.0.0.1:${PORT:-8080}:8080" \
  "$@" "$image" serve
