#!/usr/bin/env bash
# Run HERE (a machine with pip's registry), before a session's one call on a lent GPU machine
# (the brief's `device` tool). Its image has PyTorch, pandas, matplotlib, scikit-learn, pytest
# and hypothesis but not MLflow: this puts MLflow's wheels for that image's Python 3.12 into
# .whl/ (less the big ones the image already has, or the 64 MiB a call carries is passed) and
# the real CIFAR-10 subset into .data/. Both folders are git-ignored. Then, with the tool:
#   run(command="bash tests/device_check.sh", carry=[".whl", ".data"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
MLFLOW=$(python3 -c 'import mlflow; print(mlflow.__version__)')
rm -rf .whl && mkdir -p .whl .data
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "mlflow==$MLFLOW" "tomli-w>=1.0" 2>&1 | grep -v "^WARNING: Location" || true
# in the image already (the device README's package list); pip there takes the installed copy
for p in pyarrow scipy numpy pandas matplotlib scikit_learn pillow fonttools contourpy kiwisolver cycler pyparsing \
         python_dateutil six packaging jinja2 markupsafe click requests urllib3 idna certifi charset_normalizer \
         protobuf psutil pyyaml typing_extensions joblib threadpoolctl werkzeug h11 anyio httpx httpcore aiohttp aiosignal \
         aiohappyeyeballs attrs frozenlist multidict propcache yarl narwhals filelock fsspec cloudpickle sympy mpmath \
         networkx pygments rich markdown_it_py mdurl typer shellingham tabulate tqdm seaborn zipp; do
  rm -f .whl/"$p"-*.whl
done
SUBSET=../shared/data/cifar10-subset/cifar-10-batches-py
[ -d "$SUBSET" ] && rm -rf .data/cifar-10-batches-py && cp -r "$SUBSET" .data/
du -sh .whl .data
