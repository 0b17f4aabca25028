#!/bin/sh
# Runs inside an image build (Dockerfile.server, Dockerfile.client), in two steps so that a
# change to fedvox's own code rebuilds only a small layer:
#   sh install.sh deps DIST...   make the venv /opt/fedvox, install the third-party
#                                requirements of the distributions (their pyproject.toml)
#   sh install.sh self DIST...   install the distributions themselves, with no dependencies
#                                and no index, then import their entry points as a check
# When the build context has a wheelhouse (./wheelhouse, filled by docker/wheelhouse.sh), its
# wheels are beside this script in /tmp/install and `deps` installs offline from them
# (--no-index --find-links); otherwise from the package index that pip is configured for.
set -eu
here=$(dirname "$0")
mode=$1
shift
pip="/opt/fedvox/bin/python -m pip --no-cache-dir --disable-pip-version-check"
case "$mode" in
  deps)
    python3 -m venv /opt/fedvox
    /opt/fedvox/bin/python "$here/requirements.py" "$@" >/tmp/requirements.txt
    if ls "$here"/*.whl >/dev/null 2>&1; then
      echo "install: offline, from the wheelhouse ($(ls "$here"/*.whl | wc -l) wheels)"
      $pip install --no-index --find-links "$here" -r /tmp/requirements.txt
    else
      echo "install: from the package index"
      $pip install -r /tmp/requirements.txt
    fi
    rm /tmp/requirements.txt
    # torch's wheel carries C++ unit-test executables that nothing imports (about 130 MB)
    for torch in /opt/fedvox/lib/python3*/site-packages/torch; do
      [ -d "$torch" ] || continue
      rm -rf "$torch/test" "$torch"/bin/test_* "$torch"/bin/*Test
    done
    ;;
  self)
    $pip install --no-index --no-deps --no-build-isolation "$@"
    # fails the build when a module imports a package the pyproject.toml does not declare
    /opt/fedvox/bin/python -c "import fedvox.cli, fedvox.admin, fedvox.admin_download"
    for dist in "$@"; do
      case "$(basename "$dist")" in
        server) /opt/fedvox/bin/python -c "import fedvox.server.app, fedvox.server.cli" ;;
        client) /opt/fedvox/bin/python -c \
          "import fedvox.client.cli, fedvox.client.runner, fedvox.synth.cli, fedvox.sim.cli" ;;
      esac
    done
    ;;
  *)
    echo "usage: install.sh deps|self DIST..." >&2
    exit 2
    ;;
esac
