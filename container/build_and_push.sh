#!/usr/bin/env bash
# Build the image from the repository's Dockerfile and push it to Amazon ECR in the account and
# region of the AWS CLI's credentials; the repository is created when missing.
#
#   container/build_and_push.sh [NAME[:TAG]] [docker build options...]
#   container/build_and_push.sh segcontainer:latest
#   container/build_and_push.sh segcontainer:cu130 --build-arg BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
#
# Region: AWS_REGION, else AWS_DEFAULT_REGION, else `aws configure get region`.
# PLATFORM (default linux/amd64, what SageMaker's GPU instances run) for builds on ARM machines.
# Prints the image URI to give to an Estimator or Model.
set -euo pipefail

name=${1:-segcontainer:latest}
shift || true
repository=${name%%:*}
tag=latest
[[ $name == *:* ]] && tag=${name#*:}

region=${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region || true)}}
if [ -z "$region" ]; then
  echo "no region: set AWS_REGION or run aws configure" >&2
  exit 1
fi
account=$(aws sts get-caller-identity --query Account --output text)
domain=amazonaws.com
[[ $region == cn-* ]] && domain=amazonaws.com.cn
registry=$account.dkr.ecr.$region.$domain
uri=$registry/$repository:$tag

if ! aws ecr describe-repositories --region "$region" --repository-names "$repository" >/dev/null 2>&1; then
  echo "creating ECR repository $repository in $region" >&2
  aws ecr create-repository --region "$region" --repository-name "$repository" >/dev/null
fi
aws ecr get-login-password --region "$region" |
  docker login --username AWS --password-stdin "$registry"

cd "$(dirname "$0")/.."
docker build --platform "${PLATFORM:-linux/amd64}" -t "$repository:$tag" "$@" .
docker tag "$repository:$tag" "$uri"
docker push "$uri"
echo "$uri"
