"""resnest-serving: export, serve and load-test ResNeSt image classifiers, wire-compatible with Paddle Serving 0.9.

One installed package. Its sub-packages are the repository's top-level folders (`setup.cfg` maps them):
`protocol` (wire facts), `export` (checkpoints to bundles), `pipeline` (preprocess, engines, postprocess),
`serving` (the doors), `client` (clients and load tests), `demo`; `resnest_serving.cli` is the `resnest` command.
"""

__version__ = "0.1.0"
