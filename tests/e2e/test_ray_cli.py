"""`resnest serve --ray*` flags: bad combinations are refused with a message naming the flag, before
anything starts (no Ray instance here)."""

from __future__ import annotations

import pytest

from resnest_serving.cli import main
from resnest_serving.serving.ray.app import RayOptions

CASES = [
    (["--ray-min-replicas", "2"], "--ray-min-replicas only apply with --ray"),
    (["--ray-target-ongoing", "3", "--ray-replica-cpus", "1"], "--ray-target-ongoing, --ray-replica-cpus only apply"),
    (["--ray", "--ray-min-replicas", "0"], "--ray-min-replicas must be >= 1, got 0"),
    (["--ray", "--ray-min-replicas", "3", "--ray-max-replicas", "2"],
     "--ray-max-replicas (2) must be >= --ray-min-replicas (3)"),
    (["--ray", "--ray-target-ongoing", "0"], "--ray-target-ongoing must be > 0, got 0.0"),
    (["--ray", "--ray-max-ongoing", "0"], "--ray-max-ongoing must be >= 1, got 0"),
    (["--ray", "--ray-replica-cpus", "-1"], "--ray-replica-cpus must be >= 0, got -1.0"),
    (["--ray", "auto", "--model-server"], "--model-server and --ray do not combine"),
]


@pytest.mark.parametrize(("flags", "message"), CASES)
def test_bad_ray_flags_are_refused(flags, message, capsys, tmp_path):
    code = main(["serve", "--config", str(tmp_path / "never-read.yml"), *flags])
    assert code == 2
    assert message in capsys.readouterr().err  # main() logs the error on stderr


def test_help_documents_every_ray_flag(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in ("--ray [ADDRESS]", "--ray-min-replicas", "--ray-max-replicas", "--ray-target-ongoing",
                 "--ray-max-ongoing", "--ray-replica-cpus"):
        assert flag in text


def test_defaults_follow_the_config(tmp_path, tiny_model_dir):
    from resnest_serving.serving.config.loader import load_config
    from support import write_config

    config = load_config(write_config(tmp_path / "c.yml", tiny_model_dir, op={"batch_size": 8, "concurrency": 2},
                                      lsc={"thread_num": 2}))
    options = RayOptions()
    assert options.effective_max_ongoing(config) == 16  # 2 x batch_size: a full batch can form
    assert options.effective_replica_cpus(config) == 4.0  # concurrency x thread_num
    assert RayOptions(target_ongoing=10, replica_cpus=0.5).effective_max_ongoing(config) == 20
    assert RayOptions(replica_cpus=0.5).effective_replica_cpus(config) == 0.5


def test_tls_is_refused_with_ray(capsys, tmp_path, tiny_model_dir):
    from support import make_tls_files, write_config

    files = make_tls_files(tmp_path / "tls")
    config = write_config(tmp_path / "config.yml", tiny_model_dir,
                          top={"tls": {"cert_file": str(files["server_cert"]), "key_file": str(files["server_key"])}})
    assert main(["serve", "--config", str(config), "--ray"]) == 2
    assert "tls: is not applied with --ray" in capsys.readouterr().err


def test_tls_is_refused_under_serve_run(tmp_path, tiny_model_dir):
    """`serve run serving.ray.app:app_builder config=...` calls app_builder: tls: is refused there too."""
    from resnest_serving.serving.ray.app import app_builder
    from support import make_tls_files, write_config

    files = make_tls_files(tmp_path / "tls")
    config = write_config(tmp_path / "config.yml", tiny_model_dir,
                          top={"tls": {"cert_file": str(files["server_cert"]), "key_file": str(files["server_key"])}})
    with pytest.raises(ValueError, match="tls: is not applied with --ray"):
        app_builder({"config": str(config)})


def test_gpu_config_reserves_one_gpu_per_engine_instance(tmp_path, tiny_model_dir):
    """A GPU config's replicas ask Ray for GPUs (deployment options, no GPU needed to build them)."""
    from resnest_serving.serving.ray.app import app_builder
    from support import write_config

    config = write_config(tmp_path / "gpu.yml", tiny_model_dir, op={"concurrency": 2},
                          lsc={"device_type": 1, "devices": "0,1"})
    options = app_builder({"config": str(config), "replica_cpus": "1"})._bound_deployment.ray_actor_options
    assert options["num_gpus"] == 2.0 and options["num_cpus"] == 1.0
    one = write_config(tmp_path / "gpu1.yml", tiny_model_dir, lsc={"device_type": 1, "devices": "0"})
    assert app_builder({"config": str(one)})._bound_deployment.ray_actor_options["num_gpus"] == 1.0
    cpu = write_config(tmp_path / "cpu.yml", tiny_model_dir)
    assert "num_gpus" not in app_builder({"config": str(cpu)})._bound_deployment.ray_actor_options


def test_readme_serve_run_line_fits_two_cores():
    """README: `serve run serving.ray.app:app_builder config=configs/config.yml replica_cpus=1 min_replicas=2`
    builds two replicas that fit on 2 cores."""
    import re

    from resnest_serving.serving.ray.app import app_builder
    from support import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text().replace("\n", " ")
    line = re.search(r"`serve run resnest_serving\.serving\.ray\.app:app_builder ([^`]+)`", readme)[1]
    args = dict(arg.split("=", 1) for arg in line.split())
    assert args["config"] == "configs/config.yml"
    args["config"] = str(REPO_ROOT / args["config"])
    deployment = app_builder(args)._bound_deployment  # no public accessor
    replicas = deployment._deployment_config.autoscaling_config.min_replicas
    assert replicas == 2 and replicas * deployment.ray_actor_options["num_cpus"] <= 2

