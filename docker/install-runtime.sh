#!/usr/bin/env bash
# The image's runtime stage (docker/Dockerfile), also run by CI (tests/e2e/test_deploy.py):
# a virtual environment at PREFIX with sysinfer from the wheels in WHEELS (no index, no compiler),
# sysinfer-bind and sysinfer-healthcheck beside it, then a check that the native core loads.
#   bash docker/install-runtime.sh WHEELS PREFIX
set -euo pipefail
wheels=${1:?wheel folder}
prefix=${2:?install prefix}
here=$(cd "$(dirname "$0")" && pwd)
unset PYTHONPATH PYTHONHOME  # only what is installed in PREFIX counts
python3 -m venv "$prefix"
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-index \
  --find-links "$wheels" sysinfer
install -m 0755 "$here/../runtime/sysinfer-bind" "$prefix/bin/sysinfer-bind"
install -m 0755 "$here/healthcheck.py" "$prefix/bin/sysinfer-healthcheck"
# Both scripts run with the environment's Python (no /usr/bin/env lookup at run time).
sed -i "1s|.*|#!$prefix/bin/python|" "$prefix/bin/sysinfer-bind" "$prefix/bin/sysinfer-healthcheck"
"$prefix/bin/python" -I -c "import sysinfer, sysinfer._native; print('sysinfer', sysinfer.__version__, 'native core ok')"
"$prefix/bin/sysinfer-server" --help >/dev/null
"$prefix/bin/sysinfer-bind" >/dev/null
