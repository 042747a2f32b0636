"""The config.yml schema, each key declared once: its default, allowed values and meaning live in the field's
`Setting`, from which `serving.config.loader` parses and checks it and `serving.config.docs` writes the tables of
docs/configuration.md. Paddle Serving 0.9's keys and defaults (`ServerYamlConfChecker`, `Op.init_from_dict`),
then ours."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnest_serving.pipeline.engines.choose import ENGINE_CHOICES
from resnest_serving.serving.config.yaml_file import ConfigError

if TYPE_CHECKING:
    from resnest_serving.serving.repository.policy import VersionPolicy

MIB = 1024 * 1024
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CLIENT_TYPES = ("local_predictor", "brpc")


@dataclass(frozen=True)
class Setting:
    """How one config key is read and documented.

    kind: int | number | bool | str | port | path | str_list | section | custom (parsed by hand in
    serving.config.loader, because it depends on other keys). `origin`: "paddle" (Paddle Serving's key), "ours" or
    "compat" (Paddle Serving's, accepted and type-checked, no effect here)."""

    kind: str
    doc: str
    origin: str = "paddle"
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    normalize: Callable[[str], str] | None = None
    non_empty: bool = False
    type_doc: str = ""  # the type column, where the kind does not say it (custom keys)
    default_doc: str = ""  # the default column, where the default is computed or absent


def setting(default: Any = MISSING, doc: str = "", kind: str = "", **options: Any) -> Any:
    """A dataclass field with its Setting (kind defaults to the default's type)."""
    if not kind:
        kind = {bool: "bool", int: "int", float: "number", str: "str"}[type(default)]
    meta = {"setting": Setting(kind, doc, **options)}
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple or a default_factory")
    return field(default=default, metadata=meta) if default is not MISSING else field(metadata=meta)


def section(factory: Callable[[], Any], doc: str) -> Any:
    return field(default_factory=factory, metadata={"setting": Setting("section", doc)})


def default_of(cls: type, name: str) -> Any:
    """The schema's default of key `name` of section `cls` (for code that needs it without a config)."""
    return next(f.default for f in fields(cls) if f.name == name)


def settings_of(cls: type) -> list[tuple[Field, Setting]]:
    """(field, Setting) of every config key of a schema class, in declaration order."""
    return [(f, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata]


@dataclass(frozen=True)
class TracerConfig:
    """`dag.tracer`."""

    interval_s: int = setting(-1, "When ≥ 1, one line on the `pipeline.tracer` logger every `interval_s` seconds: "
                                  "requests, QPS, err_no counts, mean and max latency over the interval.")


@dataclass(frozen=True)
class DagConfig:
    """`dag:` section."""

    is_thread_op: bool = setting(True, "Ops always run in threads of the worker process. PaddleClas sets it to "
                                       "false.", origin="compat")
    retry: int = setting(1, "Attempts per request while it times out (err_no 6000: op `timeout` or a full queue), "
                            "as Paddle Serving's DAG retries only timeouts; when they run out the err_msg says "
                            "\"exceeded retry count\".", minimum=1)
    client_type: str = setting("brpc", "Paddle Serving's DAG client type.", origin="compat",
                               choices=("brpc", "grpc"))
    use_profile: bool = setting(False, "Log one line per request with its stage timings (`logid=... profile "
                                       "images:N preprocess:..ms inference:..ms postprocess:..ms`).")
    channel_size: int = setting(0, "Paddle Serving's channel bound, where 0 means unbounded. Our queue bound is "
                                   "`op.<name>.max_queue_images`.", origin="compat", minimum=0)
    tracer: TracerConfig = section(TracerConfig, "See `tracer.interval_s`.")
    channel_recv_frist_arrive: bool = setting(False, "The misspelling is Paddle Serving's own.", origin="compat")
    enable_prometheus: bool = setting(False, "Also serve Prometheus metrics on `prometheus_port`. `GET /metrics` "
                                             "on `http_port` is always available.")
    prometheus_port: int | None = setting(None, "A separate metrics port. Required when `enable_prometheus` is "
                                                "true.", kind="port")


@dataclass(frozen=True)
class TlsConfig:
    """`tls:` section: TLS on every front door when `cert_file` and `key_file` are set."""

    cert_file: Path | None = setting(None, "PEM certificate (chain) of the server. With `key_file`, every front "
                                           "door speaks TLS only: gRPC over TLS, HTTPS, bRPC over TLS.",
                                     origin="ours", kind="path")
    key_file: Path | None = setting(None, "PEM private key of `cert_file`.", origin="ours", kind="path")
    client_ca_file: Path | None = setting(None, "PEM CA bundle. When set, clients must present a certificate "
                                                "signed by it (mutual TLS) on every front door.", origin="ours",
                                          kind="path")

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True)
class AuthConfig:
    """`auth:` section: bearer-token authentication on every front door."""

    token_file: Path | None = setting(
        None, "File of accepted tokens, one per line (blank lines and `#` comments skipped). When set, every "
        "request must carry one: REST `Authorization: Bearer <token>`, gRPC metadata `authorization: Bearer "
        "<token>`, bRPC `RpcMeta.authentication_data`. Health endpoints stay open; `/metrics` needs a token.",
        origin="ours", kind="path")

    @property
    def enabled(self) -> bool:
        return self.token_file is not None


@dataclass(frozen=True, kw_only=True)
class LocalServiceConf:
    """`op.<name>.local_service_conf`: the model and how to run it. `client_type` is the effective one (op
    level or here); `server_endpoints` given here is moved to `OpConfig.server_endpoints`."""

    model_config: Path = setting(
        doc="The `serving_server` folder: model and params files plus `serving_server_conf.prototxt` (served as "
            "version 1), or a folder of numbered version folders `1/`, `2/`, ... each holding one (Triton's layout; "
            "see `op.<name>.version_policy`). It is resolved **relative to the config file's folder** (see below). It is read in remote mode too, for "
            "the feed/fetch names, the input size and the labels.", kind="custom", type_doc="str (path)",
        default_doc="— (**required**)")
    client_type: str = setting(
        "local_predictor", "`local_predictor` runs the engine in this server. `brpc` calls a remote model server "
        "(`GeneralModelService`) at `server_endpoints`. `grpc` (and `pipeline_grpc`) are Paddle Serving client "
        "types that this server rejects with \"not supported, use brpc\".", kind="custom",
        type_doc="`local_predictor` \\| `brpc`", default_doc="see below")
    workdir: str = setting("", "", origin="compat")
    thread_num: int = setting(
        2, "Math threads per engine instance (any engine). Paddle Serving's default is 2. See below.", kind="custom",
        type_doc="int ≥ 1", default_doc="**cores // (concurrency × worker_num)**, at least 1")
    device_type: int = setting(
        -1, "-1: CPU if `devices` is empty, else GPU. 0: CPU. 1: GPU. 2: GPU with TensorRT. The Paddle Serving "
        "codes 3–6 (ARM, Kunlun XPU, Ascend 310/910) are rejected as \"not supported by this server\".",
        kind="custom", type_doc="int")
    devices: tuple[int, ...] = setting(
        (), "`\"\"` means CPU. `\"0\"` or `\"0,1\"` are GPU ids. An unquoted single id such as `devices: 0` is "
        "accepted. `device_type` 1 and 2 need at least one id. With `device_type: 0`, `devices` is ignored (with "
        "a warning), as in Paddle Serving.", kind="custom", type_doc="str", default_doc="`\"\"`")
    mem_optim: bool = setting(True, "Paddle Inference memory optimisation. Applied on GPU only: Paddle 3.3.1's PIR "
                                    "CPU predictor fails to build with it, so on CPU it is accepted and ignored.")
    ir_optim: bool = setting(
        True, "Paddle Inference IR (graph) optimisation passes. Deliberately on by default: for legacy `.pdmodel` "
        "models it is the difference between ~3 and ~14 req/s for ResNeSt50 on 2 cores (`../shared/reference/perf_anchors.md`); "
        "for Paddle 3 `.json` models it makes no measurable difference.", default_doc="**true** (Paddle Serving: false)")
    precision: str = setting(
        "fp32", "Case-insensitive; stored lowercase. CPU: `bf16` on OpenVINO or Paddle Inference (needs a CPU with "
        "avx512_bf16 or AMX, and for Paddle `use_mkldnn`); `int8` on OpenVINO or ONNX Runtime with a model exported "
        "with `--int8` (needs VNNI; a PaddleClas legacy inference model works too). A CPU without the instructions, "
        "or an `ONEDNN_MAX_CPU_ISA` cap below them (for OpenVINO and Paddle), is refused at start-up rather than "
        "emulated: one error line with each engine's reason, exit status 2. With bf16/int8 the start-up log "
        "shows the accuracy check recorded at export. GPU: fp16, and int8 with TensorRT.", choices=PRECISIONS, normalize=str.lower)
    use_calib: bool = setting(False, "TensorRT int8 calibration mode.")
    use_mkldnn: bool = setting(
        True, "Paddle Inference only: use oneDNN kernels on CPU. Deliberately on by default: 3.7–4.6× faster "
        "than Paddle's native CPU kernels for ResNeSt (README \"Performance\").", default_doc="**true** (Paddle Serving: false)")
    mkldnn_cache_capacity: int = setting(
        0, "Paddle Inference only: how many input shapes oneDNN keeps primitives for. 0 leaves it unset, so "
        "Paddle's own default of 10 applies (as in Paddle Serving). Each batch size is one input shape, so a "
        "`batch_size` above 10 may want a larger value.", minimum=0)
    mkldnn_op_list: tuple[str, ...] | None = setting(
        None, "Restrict oneDNN to these ops. Only with `engine: paddle` and a legacy `.pdmodel` model; refused "
        "anywhere else, because Paddle 3.3 runs Paddle 3 (PIR) models with the same oneDNN primitives with or "
        "without it (measured) and the other engines do not read it.", kind="str_list")
    mkldnn_bf16_op_list: tuple[str, ...] | None = setting(
        None, "The ops to run in bf16. Same restriction as `mkldnn_op_list`.", kind="str_list")
    min_subgraph_size: int = setting(3, "The smallest subgraph that is handed to TensorRT.", minimum=0)
    batch_streams: int = setting(
        1, "OpenVINO only: a batch of two or more images is split over this many inference streams that run in "
        "parallel, with `thread_num` / streams math threads each (at most `thread_num` streams), while a lone "
        "image still runs on all `thread_num` threads. The engine alone spends ~30 % less CPU per image this way "
        "at int8 on 2 cores, but served on 2 cores it measured no faster (README \"Performance\"), so it is "
        "off by default: measure it on your machine (`python -m bench.served --compare "
        "local_service_conf.batch_streams=1,2`). 1: off. A value above 1 with `engine` paddle or onnxruntime is "
        "refused; with `auto` it applies when OpenVINO is the engine chosen.", origin="ours", minimum=1)
    fetch_list: tuple[str, ...] | None = setting(None, "Fetch aliases. Overrides the op-level `fetch_list`.",
                                                 kind="custom", type_doc="non-empty list of str")
    server_endpoints: tuple[str, ...] = setting(
        (), "Same as the op-level key, which is Paddle Serving's place for it. Either place may be used. If both "
        "are given, they must be equal.", origin="ours, in this place", kind="custom",
        type_doc="list of `\"host:port\"`", default_doc="[]")
    rpc_timeout_ms: int = setting(20000, "Timeout of each remote model call (`client_type: brpc`).", origin="ours",
                                  minimum=1)
    rpc_tls_ca_file: Path | None = setting(
        None, "Remote mode (`client_type: brpc`): PEM CA bundle that verifies the model servers' certificates. "
        "When set, the pipeline speaks bRPC over TLS to every endpoint of `server_endpoints` (the model servers' "
        "`tls:` on). Relative to the config file's folder.", origin="ours", kind="path")
    rpc_tls_cert_file: Path | None = setting(
        None, "Remote mode: the pipeline's PEM client certificate, for model servers with `tls.client_ca_file` "
        "(mutual TLS). Needs `rpc_tls_key_file` and `rpc_tls_ca_file`.", origin="ours", kind="path")
    rpc_tls_key_file: Path | None = setting(None, "Remote mode: the PEM private key of `rpc_tls_cert_file`.",
                                            origin="ours", kind="path")
    rpc_token_file: Path | None = setting(
        None, "Remote mode: a token file in the `auth.token_file` format; its first token is sent to the model "
        "servers (`RpcMeta.authentication_data`, for their `auth:`). Re-read when it changes (rotation: add the "
        "new token to the model servers' files first).", origin="ours", kind="path")

    @property
    def device(self) -> str:
        """"cpu", "gpu" or "tensorrt", resolving device_type -1 from `devices` as Paddle Serving does."""
        if self.device_type == 2:
            return "tensorrt"
        if self.device_type == 1 or (self.device_type == -1 and self.devices):
            return "gpu"
        return "cpu"


@dataclass(frozen=True, kw_only=True)
class OpConfig:
    """`op.<name>`: the one model op (PaddleClas: `imagenet`) with batching, limits and post-processing."""

    name: str
    concurrency: int = setting(1, "Number of engine instances, each in its own worker process. With GPUs, instance "
                                  "*i* uses `devices[i % n]`.", minimum=1)
    timeout: int = setting(-1, "Timeout for each inference call. ≤ 0 means no timeout. Exceeding it gives err_no "
                               "6000.", type_doc="int (ms)")
    retry: int = setting(1, "Paddle Serving also ignores it in practice.", origin="compat", minimum=1)
    batch_size: int = setting(
        4, "Dynamic batching: the largest number of images in one engine call. Every engine instance runs each "
        "batch size 1..`batch_size` at start-up (the start-up check); a request with more images than this runs "
        "alone, in engine calls of `batch_size`. Paddle Serving's default is 1; ours is 4 because with the default "
        "`auto_batching_timeout` a batch never waits, it only takes requests already queued, so a single client "
        "runs exactly as with 1 (measured: README \"Performance\"). 1 turns batching off.", minimum=1)
    auto_batching_timeout: int = setting(
        -1, "The longest a batch waits to fill. An idle engine instance opens a batch with the oldest queued "
        "request and takes the next queued ones while their images fit in `batch_size` (a request's images are "
        "never split). A batch still short of `batch_size` waits for more **only while another request is on its "
        "way** (being decoded and preprocessed), and at most this long after it opened. It closes at the first "
        "of: `batch_size` images (or the next request would not fit); this timeout; nothing more on its way (so "
        "a lone request runs at once, never waiting out the timeout). ≤ 0, or `batch_size: 1`, means no wait: a "
        "batch takes what is already queued (Paddle Serving instead blocks until the batch is full). With "
        "`log_level: DEBUG` each batch is logged with its size and why it closed (`full`, `next does not fit`, "
        "`timeout`, `nothing arriving`, `no wait`).", type_doc="int (ms)")
    server_endpoints: tuple[str, ...] = setting(
        (), "Remote model servers, called over bRPC with `client_type: brpc`. May also be given in "
        "`local_service_conf` (see below).", kind="custom", type_doc="list of `\"host:port\"`", default_doc="[]")
    fetch_list: tuple[str, ...] | None = setting(None, "Fetch aliases. `local_service_conf.fetch_list` overrides "
                                                       "it.", kind="custom", type_doc="list of str",
                                                 default_doc="all outputs")
    client_config: Path | None = setting(
        None, "Remote mode only (`client_type: brpc`): the remote model's `serving_client_conf.prototxt` (or its "
        "folder); its feed and fetch names are what the pipeline sends to and asks of the model server, instead "
        "of `model_config`'s. Resolved relative to the config file's folder.", kind="path")
    client_type: str = setting(
        "local_predictor", "Paddle Serving reads the client type here in remote mode. Accepted here or in "
        "`local_service_conf` (the effective value is in both).", kind="custom", type_doc="str", default_doc="—")
    use_encryption_model: bool = setting(False, "Encrypted models are **not supported**: `true` is an error.",
                                         kind="custom", type_doc="bool")
    encryption_key: str | None = setting(None, "", origin="compat", kind="str")
    local_service_conf: LocalServiceConf = setting(doc="See below.", kind="section")
    topk: int = setting(1, "1 gives PaddleClas's response (`label`, `prob`). A value > 1 adds the keys "
                           "`class_ids`, `scores` and `label_names`, with the top-k per image.", origin="ours",
                        minimum=1)
    label_file: Path | None = setting(
        None, "Class-name file used for `label` / `label_names`: PaddleClas's `<id> <name>` list or one name per "
        "line (Paddle Serving's `imagenet.label`). Resolved relative to the config file's folder.", origin="ours",
        kind="path", default_doc="the bundle's label file")
    engine: str = setting(
        "auto", "The inference engine. `auto`: the first of openvino > onnxruntime > paddle that can run this model "
        "at this `precision` here and passes its start-up check (each one passed over is logged with why; a "
        "failure is a WARNING). `openvino` and `onnxruntime` run the bundle's `inference.onnx` "
        "(`inference.int8.onnx` for int8); OpenVINO also reads a legacy `.pdmodel`. Case-insensitive. See README "
        "\"Engines and precision\".", origin="ours", choices=ENGINE_CHOICES, normalize=str.lower)
    max_images_per_request: int = setting(32, "A request with more images (keys) than this gets err_no 5000.",
                                          origin="ours", minimum=1)
    max_image_pixels: int = setting(40_000_000, "Limit on decoded width × height per image, as a guard against "
                                                "decompression bombs.", origin="ours", minimum=1)
    max_aspect_ratio: float = setting(20.0, "Limit on an image's long side / short side, checked from the header "
                                            "before decoding (a 1×10000 strip would otherwise be resized to "
                                            "256×2560000).", origin="ours", minimum=1)
    jpeg_dct_scaling: bool = setting(
        False, "Decode a JPEG whose short side is at least twice `resize_short` at a libjpeg DCT scale (1/2 ... 1/8) "
        "that keeps the short side >= `resize_short`, then resize as usual: about half the decode time of a large "
        "photo, but the pixels differ slightly from PaddleClas's full decode (effect measured in README \"Engines "
        "and precision\"). Off: PaddleClas's exact pixels.", origin="ours")
    max_queue_images: int = setting(1024, "The number of images that may wait for the engine (backpressure). "
                                          "Requests beyond it are refused.", origin="ours", minimum=1,
                                    type_doc="int ≥ `max_images_per_request`")
    version_policy: VersionPolicy | None = setting(
        None, "Which versions of a versioned `model_config` (numbered version folders `1/`, `2/`, ..., Triton's "
        "layout) are served, in Triton's three forms: `{latest: {num_versions: N}}` (the N highest-numbered "
        "loadable versions), `{specific: {versions: [1, 3]}}` (exactly these; one not on disk is an ERROR naming "
        "it, the others are served), `{all: {}}`. Version folders are positive integers without leading zeros; "
        "each holds an exported `serving_server` folder's files (directly, or in `N/serving_server/`). An "
        "unversioned `model_config` is version 1 and this key does not apply. See README \"Many models and "
        "versions\".", origin="ours", kind="custom", type_doc="mapping", default_doc="`{latest: {num_versions: 1}}`")
    response_cache_mb: float = setting(
        0.0, "Size limit of the response cache in MiB; 0 turns it off. The cache keeps the model's output row per "
        "image file (keyed by the model version and a BLAKE2b hash of the image's bytes, base64 decoded first, so "
        "every protocol shares entries): a repeated image is answered without decoding or running the model, for "
        "any `topk`. Least recently used entries go first (about 4 KB per image for 1000 classes). FP32 tensor "
        "requests bypass it. Counters: `resnest_response_cache_hits_total`, `..._misses_total`, "
        "`resnest_response_cache_bytes`.", origin="ours", minimum=0, maximum=65536,
        type_doc="number (MiB)")

    @property
    def is_remote(self) -> bool:
        """True when the model runs on another process/host (client_type brpc + server_endpoints)."""
        return self.local_service_conf.client_type == "brpc"

    @property
    def timeout_s(self) -> float | None:
        """Per-call timeout in seconds, None when disabled (timeout <= 0), as Paddle Serving reads it."""
        return self.timeout / 1000.0 if self.timeout > 0 else None

    @property
    def effective_fetch_list(self) -> tuple[str, ...] | None:
        """local_service_conf.fetch_list overrides the op-level one (Paddle Serving's rule)."""
        lsc = self.local_service_conf.fetch_list
        return lsc if lsc is not None else self.fetch_list


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The whole config.yml, validated. Ports are None when that front door is off (0 = OS picks)."""

    rpc_port: int | None = setting(None, "gRPC `PipelineService` port. Absent means no gRPC front door.", kind="port")
    http_port: int | None = setting(None, "REST port: `POST /{service_name}/{method}`, health, `GET /metrics`. "
                                          "Absent means no HTTP front door.", kind="port")
    worker_num: int = setting(1, "Number of worker processes. Each is a full copy of the server, and they share "
                                 "the ports through `SO_REUSEPORT`.", minimum=1)
    build_dag_each_worker: bool = setting(False, "Every worker always builds its own pipeline.", origin="compat")
    grpc_gateway_port: int | None = setting(None, "Type-checked only; Paddle Serving does not use it either.",
                                            origin="compat", kind="int")
    dag: DagConfig = section(DagConfig, "See [`dag`](#dag).")
    op: tuple[OpConfig, ...] = setting(doc="One op per model, served by its name (several ops: several models; "
                                           "names are case-sensitive, `a` and `A` are two). See "
                                           "[`op.<name>`](#opname).", kind="custom", type_doc="mapping",
                           default_doc="— (required)")
    host: str = setting("127.0.0.1", "Bind address for every port. Use `0.0.0.0` (or `\"::\"`, quoted) to listen "
                                     "on all interfaces.", origin="ours", normalize=str.strip, non_empty=True)
    brpc_port: int | None = setting(None, "bRPC `baidu_std` front door (`PipelineService.inference`). Absent means "
                                          "no bRPC front door.", origin="ours", kind="port")
    service_name: str = setting(
        "", "The name checked against `request.name` (err_no 3002 when they differ) and used in REST URLs. Paddle "
        "Serving takes it from `WebService(name=...)`, which PaddleClas sets to `\"imagenet\"`, its op name. Allowed "
        "characters: letters, digits, `_ - .`. Only with one op: with several, each op's name is its model's name.",
        origin="ours", kind="custom", type_doc="str", default_doc="the op's name")
    max_request_bytes: int = setting(64 * MIB, "Largest HTTP body, gRPC message and bRPC body accepted.",
                                     origin="ours", minimum=1024, maximum=2**31 - 1,
                                     type_doc="int, 1024 – 2³¹−1", default_doc="67108864 (64 MiB)")
    max_connections: int = setting(1024, "Open connections per front door (REST, bRPC); further ones are closed "
                                         "at once. gRPC (which cannot cap connections): calls in progress, "
                                         "RESOURCE_EXHAUSTED beyond.", origin="ours",
                                   minimum=1)
    max_connections_per_peer: int = setting(256, "Open connections per client address per front door (REST, "
                                                 "bRPC). 0 means no per-address limit (behind a proxy, every "
                                                 "client has the proxy's address).", origin="ours", minimum=0)
    idle_timeout_s: float = setting(60.0, "A connection with no request in progress for this long is closed; a "
                                          "request's headers (REST) must arrive within it.", origin="ours",
                                    minimum=0.1)
    request_read_timeout_s: float = setting(30.0, "Time to receive a request's body (REST) or the rest of a "
                                                  "frame (bRPC) once it has started. REST answers 408; bRPC "
                                                  "closes the connection.", origin="ours", minimum=0.1)
    tls: TlsConfig = section(TlsConfig, "See [`tls` and `auth`](#tls-and-auth).")
    auth: AuthConfig = section(AuthConfig, "See [`tls` and `auth`](#tls-and-auth).")
    shutdown_grace_s: float = setting(10.0, "After SIGTERM/SIGINT, the number of seconds in which in-flight "
                                            "requests may finish.", origin="ours", minimum=0)
    model_repository_poll_s: float = setting(
        0.0, "Seconds between looks at every versioned `model_config` folder (Triton's `--repository-poll-secs`); 0 "
        "turns polling off. A new version folder is loaded once it is complete and unchanged for one interval "
        "(so a copy in progress is never loaded), started in new engine worker processes, checked (start-up and "
        "recorded accuracy checks), then switched to for new requests; the version it replaces finishes its "
        "requests in flight (up to `shutdown_grace_s`) and stops. A version that fails to start is never "
        "switched to: the old one keeps serving, one ERROR line says why, and it is tried again only when its "
        "files change. A removed version folder is unloaded, never the last servable one.", origin="ours",
        minimum=0, type_doc="number (s)")
    log_level: str = setting("INFO", "Case-insensitive.", origin="ours", choices=LOG_LEVELS, normalize=str.upper)
    model_control: str = setting(
        "none", "`explicit` opens the Open Inference Protocol's `POST /v2/repository/models/{name}/load` and "
        "`/unload` (gRPC RepositoryModelLoad/Unload), as Triton's `--model-control-mode=explicit`; with `none` they "
        "answer 403 / PERMISSION_DENIED. With `auth:` on they need the token like every call. `explicit` is refused "
        "with `model_repository_poll_s` > 0 (both would decide what is served) and with `worker_num` > 1 (a call "
        "reaches one worker process). See README \"Load and unload models\".", origin="ours", choices=("none", "explicit"), normalize=str.lower)
    config_file: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.service_name:
            object.__setattr__(self, "service_name", self.op[0].name if len(self.op) == 1 else "resnest-serving")

    @property
    def models(self) -> dict[str, OpConfig]:
        """Model name -> its op, in config order: `service_name` for the one op of a one-op config (as Paddle
        Serving names it), else each op's name."""
        if len(self.op) == 1:
            return {self.service_name: self.op[0]}
        return {op.name: op for op in self.op}

    def only_op(self, where: str) -> OpConfig:
        """The op of a one-op config; a [CONF] error naming `op` for a part (`where`) that serves one model."""
        if len(self.op) != 1:
            raise ConfigError(f"[CONF] op: got {len(self.op)} ops ({', '.join(repr(o.name) for o in self.op)}); "
                              f"{where} serves exactly one model: give it a config with one op")
        return self.op[0]

    @property
    def ports(self) -> dict[str, int]:
        """The front doors that are on: key name -> port (0 = ephemeral)."""
        named = {"rpc_port": self.rpc_port, "http_port": self.http_port, "brpc_port": self.brpc_port}
        if self.dag.enable_prometheus:
            named["dag.prometheus_port"] = self.dag.prometheus_port
        return {k: v for k, v in named.items() if v is not None}
