#!/usr/bin/env bash
# Installs Paddle Serving 0.9's pipeline (Python side, in-process Paddle Inference: client_type local_predictor;
# no C++ serving binary) into a Python 3.9 venv outside the repository, for bench/vs_paddle_serving.py.
#   bench/paddle_serving/setup.sh [VENV (default /work/ps39)] [PYTHON3.9 (default: pyenv's 3.9.18 or python3.9)]
# Pins: what worked here on 2026-12-05. paddle-serving-app 0.9.0 pins opencv-python==3.4.17.61, which has no
# Python 3.9 wheel (pip builds it from source and fails), so it is installed without dependencies and its
# other dependencies are listed here; OpenCV comes from opencv-python-headless. Paddle 2.6 needs numpy < 2;
# paddle-serving-server 0.9 pins grpcio <= 1.33.2, which needs protobuf 3.x.
set -euo pipefail
VENV=${1:-/work/ps39}
PY=${2:-}
if [[ -z "$PY" ]]; then
    for candidate in /root/.pyenv/versions/3.9.18/bin/python python3.9; do
        if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
    done
fi
[[ -n "$PY" ]] || { echo "no Python 3.9 found: pass its path as the second argument" >&2; exit 1; }
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q \
    paddlepaddle==2.6.2 paddle-serving-server==0.9.0 paddle-serving-client==0.9.0 \
    numpy==1.26.4 protobuf==3.20.3 grpcio==1.33.2 opencv-python-headless==4.10.0.84 \
    pillow==11.3.0 pyclipper==1.3.0.post6 shapely==2.0.7 sentencepiece==0.1.96 six==1.17.0 pyyaml==6.0.3
"$VENV/bin/python" -m pip install -q --no-deps paddle-serving-app==0.9.0
"$VENV/bin/python" -c "import paddle, paddle_serving_server.web_service, paddle_serving_app.reader; \
print('Paddle', paddle.__version__, 'and Paddle Serving 0.9 pipeline ready in $VENV')"
