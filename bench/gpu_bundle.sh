#!/usr/bin/env bash
# Prepares, in .gpu-bundle/ (git-ignored), what the offline GPU machine lacks:
#   .gpu-bundle/wheels/  CPython 3.12 manylinux x86-64 wheels of the dependencies its image does not
#                        have, at the versions installed in our venv (no deps resolved by pip: the
#                        list below is complete, and a Requires-Dist check proves it at every run);
#   .gpu-bundle/data/    the four Fashion-MNIST IDX .gz files.
# Re-runs re-use what is there: a wheel is fetched again only when the venv's version changed.
# Fails when the bundle exceeds 48 MiB (a device call carries at most 64 MiB, source tree included).
#
# Usage, from anywhere in the repository:  bash bench/gpu_bundle.sh
#   PYTHON=...  the interpreter whose pip downloads and whose installed versions are pinned
#               (default .venv/bin/python, relative to the repository root).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BUNDLE=.gpu-bundle
WHEELS=$BUNDLE/wheels
DATA=$BUNDLE/data
LIMIT_MIB=48

# What the GPU image lacks and the project (or a bundled wheel) needs, as PEP 503 names.
# Not ray, psycopg or torch: the GPU runs do not use them (ray/psycopg) or the image has them.
BUNDLE_PKGS=(optuna optuna-dashboard torch-pruning sqlalchemy alembic colorlog mako bottle)
# What the image (Python 3.12.3) has, as far as the Requires-Dist check below needs to know.
IMAGE_PKGS=(torch torchvision numpy pandas matplotlib pyyaml tqdm onnx onnx-ir onnxscript onnxruntime
            pillow packaging typing-extensions markupsafe jinja2 hypothesis pytest scipy scikit-learn
            requests protobuf ml-dtypes)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)
FASHION=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz
         t10k-labels-idx1-ubyte.gz)

die() { echo "gpu_bundle: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "no python at '$PYTHON'; run 'make setup' or set PYTHON"

# --- 1. wheels --------------------------------------------------------------------------------
# Versions from the venv, so the bundle follows it.
declare -A WANT=()
while read -r name version; do WANT[$name]=$version; done < <(
  "$PYTHON" - "${BUNDLE_PKGS[@]}" <<'EOF'
import importlib.metadata as md, sys
for name in sys.argv[1:]:
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        sys.exit(f"gpu_bundle: {name} is not installed for {sys.executable}; run 'make setup' first")
EOF
)
[ "${#WANT[@]}" -eq "${#BUNDLE_PKGS[@]}" ] || die "could not read the venv's versions"

# A wheel file name's project (PEP 503-normalised) and version.
wheel_name() { local n=${1##*/}; n=${n%%-*}; n=${n,,}; n=${n//_/-}; echo "${n//./-}"; }
wheel_version() { local v=${1##*/}; v=${v#*-}; echo "${v%%-*}"; }

mkdir -p "$WHEELS" "$DATA"
shopt -s nullglob
# Drop wheels of packages no longer in the list, and stale versions of those that are.
for whl in "$WHEELS"/*.whl; do
  name=$(wheel_name "$whl")
  if [ -z "${WANT[$name]+x}" ]; then
    echo "removing $whl (not in the bundle list)"; rm -f "$whl"
  elif [ "$(wheel_version "$whl")" != "${WANT[$name]}" ]; then
    echo "removing $whl (venv has ${WANT[$name]})"; rm -f "$whl"
  fi
done
rm -rf "$WHEELS"/.tmp-*     # left by an interrupted run
# Drop unreadable wheels (truncated, damaged) so that they are fetched again.
while IFS= read -r bad; do echo "removing $bad (damaged)"; rm -f "$bad"; done < <(
  "$PYTHON" - "$WHEELS"/*.whl <<'EOF'
import sys, zipfile
for path in sys.argv[1:]:
    try:
        with zipfile.ZipFile(path) as z:
            ok = z.testzip() is None
    except (zipfile.BadZipFile, OSError):
        ok = False
    if not ok:
        print(path)
EOF
)

platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
for name in "${BUNDLE_PKGS[@]}"; do
  have=()
  for whl in "$WHEELS"/*.whl; do [ "$(wheel_name "$whl")" = "$name" ] && have+=("$whl"); done
  [ "${#have[@]}" -eq 1 ] && continue
  rm -f "${have[@]}"
  echo "downloading $name==${WANT[$name]}"
  tmp=$(mktemp -d "$WHEELS/.tmp-XXXXXX")
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platform_args[@]}" --dest "$tmp" "$name==${WANT[$name]}" \
    || { rm -rf "$tmp"; die "pip could not download $name==${WANT[$name]} for CPython 3.12 manylinux x86-64"; }
  got=("$tmp"/*.whl)
  [ "${#got[@]}" -eq 1 ] || { rm -rf "$tmp"; die "expected one wheel for $name, pip gave ${#got[@]}"; }
  mv "${got[0]}" "$WHEELS/"
  rm -rf "$tmp"
done

# Every Requires-Dist that applies on Linux x86-64 CPython 3.12 (no extras) must be in the image
# or in the bundle (at a version that satisfies it).
"$PYTHON" - "$WHEELS" "${IMAGE_PKGS[*]}" <<'EOF'
import re, sys, zipfile
from pathlib import Path
try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
env = {"python_version": "3.12", "python_full_version": "3.12.3", "os_name": "posix",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
       "platform_release": "", "platform_version": "", "implementation_name": "cpython",
       "implementation_version": "3.12.3", "platform_python_implementation": "CPython", "extra": ""}
image = {norm(n) for n in sys.argv[2].split()}
wheels = sorted(Path(sys.argv[1]).glob("*.whl"))
bundle = {norm(w.name.split("-")[0]): Version(w.name.split("-")[1]) for w in wheels}
problems = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        lines = z.read(meta).decode().splitlines()
    for line in lines:
        if not line:
            break                      # end of the headers
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = norm(req.name)
        if name in bundle:
            if not req.specifier.contains(bundle[name], prereleases=True):
                problems.append(f"{w.name} needs {req}, the bundle has {name} {bundle[name]}")
        elif name not in image:
            problems.append(f"{w.name} needs {req}, which neither the image nor the bundle has; "
                            f"add {name} to BUNDLE_PKGS in bench/gpu_bundle.sh")
if problems:
    sys.exit("gpu_bundle: " + "\ngpu_bundle: ".join(problems))
EOF

# --- 2. Fashion-MNIST -------------------------------------------------------------------------
src=
for dir in /usr/share/datasets/fashion-mnist data/FashionMNIST/raw; do
  ok=1
  for f in "${FASHION[@]}"; do [ -f "$dir/$f" ] || ok=; done
  [ -n "$ok" ] && { src=$dir; break; }
done
[ -n "$src" ] || die "Fashion-MNIST not found in /usr/share/datasets/fashion-mnist or data/FashionMNIST/raw; get it with 'apt-get install dataset-fashion-mnist'"
for f in "${FASHION[@]}"; do
  cmp -s "$src/$f" "$DATA/$f" && continue
  echo "copying $src/$f"
  gzip -t "$src/$f" || die "$src/$f is not a sound gzip file"
  cp "$src/$f" "$DATA/$f.tmp" && mv "$DATA/$f.tmp" "$DATA/$f"
done

# --- 3. sizes ---------------------------------------------------------------------------------
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo
echo "wheels in $WHEELS:"
for whl in "$WHEELS"/*.whl; do
  printf '  %6s KiB  %s\n' "$(( $(stat -c %s "$whl") / 1024 ))" "${whl##*/}"
done
wheel_b=$(du -sb "$WHEELS" | cut -f1)
data_b=$(du -sb "$DATA" | cut -f1)
total_b=$(du -sb "$BUNDLE" | cut -f1)
echo "wheels: $(mib "$wheel_b") MiB   data: $(mib "$data_b") MiB   total $BUNDLE: $(mib "$total_b") MiB (limit $LIMIT_MIB MiB)"
if command -v git >/dev/null && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  src_b=$(git ls-files -z -co --exclude-standard | { grep -zv "^$BUNDLE/" || true; } \
          | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
  echo "source tree (tracked + untracked, not ignored): $(mib "$src_b") MiB; with the bundle: $(mib $((src_b + total_b))) MiB of the 64 MiB a device call carries"
fi
[ "$total_b" -le $((LIMIT_MIB * 1048576)) ] \
  || die "$BUNDLE is $(mib "$total_b") MiB, over the $LIMIT_MIB MiB limit (a device call carries at most 64 MiB with the source tree)"

echo
echo "carry:   $BUNDLE"
echo "install: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $WHEELS/*.whl && export PYTHONPATH=/tmp/site"
echo "data:    pass --data-dir $DATA, or for the tests: mkdir -p data && cp $DATA/*.gz data/"
