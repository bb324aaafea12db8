"""Loading safety of diffusers pipelines: only safetensors weights by default (a folder with
only pickled ``.bin`` weights is refused, naming the option that allows it), a hub model that
is neither cached nor reachable fails in seconds with one clear message (presets as ``hf:``
ids), and options that cannot work (a size off the VAE grid, CPU offload on the CPU, a missing
weight variant) are refused while planning, before any weights load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers_tiny import save
from typer.testing import CliRunner, Result

from noisesearch import ConfigError
from noisesearch.cli import build_app
from noisesearch.plugins import LOAD_PLUGINS_ENV


def dry_run(*args: str) -> Result:
    return CliRunner().invoke(build_app(), ["run", "--dry-run", "--prompt", "a cat", "--verifier",
                                            "clip-score", "--evaluator", "none", *args])


def refused(result: Result, *phrases: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for phrase in phrases:
        assert phrase in result.output, result.output


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save("sd", tmp_path_factory.mktemp("sd") / "pipeline")


@pytest.fixture(scope="module")
def pickled_folder(sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD pipeline with its UNet weights as a pickle (.bin) only."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("pickled") / "pipeline"
    shutil.copytree(sd_folder, folder)
    unet = folder / "unet"
    weights = load_file(str(unet / "diffusion_pytorch_model.safetensors"))
    torch.save(weights, unet / "diffusion_pytorch_model.bin")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    return folder


def test_a_folder_with_only_pickled_weights_is_refused_naming_the_option(pickled_folder: Path) -> None:
    refused(dry_run("--model", f"hf:{pickled_folder}"), "use_safetensors=false", "unet/", ".bin")


def test_the_option_allows_pickled_weights_when_trusted(pickled_folder: Path) -> None:
    result = dry_run("--model", f"hf:{pickled_folder}", "--model-opt", "use_safetensors=false")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_the_adapter_itself_loads_safetensors_only(pickled_folder: Path) -> None:
    """Past planning too (a pipeline built from Python): diffusers is asked for safetensors."""
    from noisesearch_builtin.models.diffusers.stable_diffusion import StableDiffusionModel

    with pytest.raises(ConfigError, match="use_safetensors=false"):
        StableDiffusionModel(path=str(pickled_folder), device="cpu")


def test_a_safetensors_folder_still_plans(sd_folder: Path) -> None:
    result = dry_run("--model", f"hf:{sd_folder}")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("size", ["height=33", "width=7", "height=0"])
def test_size_off_the_vae_grid_is_refused_before_loading(sd_folder: Path, size: str) -> None:
    refused(dry_run("--model", f"hf:{sd_folder}", "--model-opt", size), size.split("=")[0])


def test_cpu_offload_on_the_cpu_is_refused_before_loading(sd_folder: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has an accelerator")
    refused(dry_run("--model", f"hf:{sd_folder}", "--model-opt", "cpu_offload=true"), "cpu_offload")


def test_a_missing_weight_variant_is_refused_before_loading(sd_folder: Path) -> None:
    refused(dry_run("--model", f"hf:{sd_folder}", "--model-opt", "variant=fp16"), "variant", "fp16")


@pytest.mark.parametrize("model", ["sd15", "hf:someone/some-pipeline"])
def test_hub_model_neither_cached_nor_reachable_fails_in_seconds(tmp_path: Path, model: str) -> None:
    env = {**os.environ, LOAD_PLUGINS_ENV: "", "HF_HOME": str(tmp_path / "empty-cache"),
           "HF_ENDPOINT": "http://127.0.0.1:9"}  # the discard port: nothing listens
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                 "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", "from noisesearch.console import main; main()", "run", "--model", model,
         "--prompt", "a cat", "-o", str(tmp_path / "r")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    seconds = time.perf_counter() - started
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    assert "not in the local hub cache" in completed.stderr and "cannot be reached" in completed.stderr
    assert seconds < 20, seconds  # huggingface_hub alone retries for ~30 s; mostly import time here
    assert not (tmp_path / "r").exists()
