# A plain Python image, as a user's unmodified script runs in (python:3.11-slim): the
# end-to-end test's wrapped trial (examples/k8s/unmodified-script.yaml) runs on it. On a
# machine without a public registry tools/images/bases.sh builds the base from Debian.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
