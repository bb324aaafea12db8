"""``noisesearch.weights``: where an option naming weights points, checked before anything loads
(the contrib verifiers' ``describe`` calls it while planning; docs/verifiers/*.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from noisesearch import ConfigError
from noisesearch.testing import unused_port
from noisesearch.weights import check_all, locate


def test_a_missing_path_and_a_folder_without_its_files_are_refused_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^judge\.model: '.*nope' is no file or folder$"):
        locate("judge.model", str(tmp_path / "nope"), ("config.json",), "")
    with pytest.raises(ConfigError, match=r"^judge\.model: the folder .* has no config\.json$"):
        locate("judge.model", str(tmp_path), ("config.json",), "")
    (tmp_path / "config.json").write_text("{}")
    assert locate("judge.model", str(tmp_path), ("config.json",), "").path == tmp_path


def test_hub_ids_not_cached_while_offline_name_every_option_and_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"^judge\.checkpoint: 'owner/judge' .* while HF_HUB_OFFLINE=1\. "
                                          r".*`hf download owner/judge judge\.pt`.*; judge\.tokenizer: "):
        check_all(("judge.checkpoint", "owner/judge", ("judge.pt",), "judge.pt"),
                  ("judge.tokenizer", "owner/tokenizer", ("vocab.txt",), ""))


def test_an_unreachable_hub_is_refused_in_seconds_not_after_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{unused_port()}")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^judge\.model: .*while the hub cannot be reached "
                                          r"\(127\.0\.0\.1: .*\)\. Download it"):
        locate("judge.model", "owner/judge", ("config.json",), "")
    assert time.perf_counter() - start < 5
