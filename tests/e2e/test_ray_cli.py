"""`resnest serve --ray*` flags: bad combinations are refused with a message naming the flag, before
anything starts (no Ray instance here)."""

from __future__ import annotations

import pytest

from serving.cli import main
from serving.ray_app import RayOptions

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
    from support import write_config

    from serving.config import load_config

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
